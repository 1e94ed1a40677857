# skiprec images, one Dockerfile, three stages:
#   builder  builds the skiprec wheel (source only, no dependencies)
#   api      the service: fastapi, uvicorn, redis, onnxruntime; no torch.  Serves /bundles/current.
#   trainer  torch + the training extra: synthetic data -> small model -> bundle in /bundles.
#
#   docker build --target api -t skiprec-api .
#   docker build --target trainer -t skiprec-trainer \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# Without TORCH_INDEX_URL, pip resolves torch from its configured indexes; on PyPI the Linux
# wheel is the large CUDA build, so pass the CPU-only index above unless you want CUDA.
# Dependencies are installed from pyproject.toml before the source is copied, so editing
# code rebuilds only the last layers.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# requirements.py EXTRA... prints the base dependencies plus those extras, one per line.
RUN printf '%s\n' \
    'import sys, tomllib' \
    'project = tomllib.load(open("pyproject.toml", "rb"))["project"]' \
    'deps = list(project["dependencies"])' \
    'for extra in sys.argv[1:]:' \
    '    deps += project["optional-dependencies"][extra]' \
    'print("\n".join(deps))' > /usr/local/bin/requirements.py \
 && groupadd --gid 10001 skiprec \
 && useradd --uid 10001 --gid skiprec --create-home --shell /usr/sbin/nologin skiprec \
 && mkdir /bundles && chown skiprec:skiprec /bundles


FROM base AS builder
# Everything .dockerignore lets through; only the wheel leaves this stage.
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .


FROM base AS api
COPY pyproject.toml ./
RUN python /usr/local/bin/requirements.py serve > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY --from=builder /wheels /wheels
RUN pip install --no-deps /wheels/skiprec-*.whl && rm -rf /wheels \
 && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the api image" >&2; exit 1; fi \
 && mkdir -p /var/lib/skiprec && chown skiprec:skiprec /var/lib/skiprec
# Where the embedded Redis keeps its data when SKIPREC_REDIS_URL is not set.
ENV SKIPREC_DATA_DIR=/var/lib/skiprec
USER skiprec
VOLUME ["/bundles"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# SKIPREC_REDIS_URL (and any other SKIPREC_* setting) comes from the environment;
# without it the service starts its embedded Redis. It binds 0.0.0.0, so it refuses to
# start without SKIPREC_API_KEY unless SKIPREC_ALLOW_UNAUTHENTICATED=true (the compose
# demo sets the latter).
CMD ["skiprec", "serve", "--bundle", "/bundles/current", "--host", "0.0.0.0", "--port", "8000"]


FROM base AS trainer
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"; \
    else \
        pip install "torch==$TORCH_VERSION"; \
    fi
COPY pyproject.toml ./
RUN python /usr/local/bin/requirements.py train > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY --from=builder /wheels /wheels
RUN pip install --no-deps /wheels/skiprec-*.whl && rm -rf /wheels
COPY training/configs ./training/configs
COPY scripts/demo.sh ./scripts/demo.sh
RUN mkdir /work && chown skiprec:skiprec /work
USER skiprec
VOLUME ["/bundles"]
# Idempotent: exits at once when /bundles/current/manifest.json exists.
CMD ["scripts/demo.sh", "/bundles/current", "/work"]
