"""Service settings from the environment (prefix ``SKIPREC_``), checked at startup.

``get_settings()`` is cached; tests build ``Settings(...)`` directly and hand it to
``create_app(settings)``. See docs/ARCHITECTURE.md ("Service") for the table.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.variants import DEFAULT_VARIANT, VariantSpec, parse_variants
from skiprec.policy import Rule, SessionPolicy

CLUSTER_SCHEME = "redis+cluster://"  # our spelling of "this URL is a Cluster node"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", CLUSTER_SCHEME)


def cluster_node_url(url: str) -> str | None:
    """``redis+cluster://host:port`` -> ``redis://host:port``; None for other URLs."""
    if url.startswith(CLUSTER_SCHEME):
        return "redis://" + url.removeprefix(CLUSTER_SCHEME)
    return None


def split_origins(value: object) -> object:
    """``"a,b"`` (the environment's form) -> ``["a", "b"]``."""
    if isinstance(value, str):
        return [origin.strip() for origin in value.split(",") if origin.strip()]
    return value


class CorsSettings(BaseSettings):
    """The one setting needed before startup: middleware is fixed at app creation."""

    model_config = SettingsConfigDict(env_prefix="SKIPREC_", extra="ignore")

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    _split = field_validator("cors_origins", mode="before")(split_origins)


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="SKIPREC_", extra="ignore")

    # Model bundle
    bundle_dir: Path
    watch_bundle: float = Field(
        default=0.0, ge=0.0, description="poll seconds for hot reload; 0 = off"
    )
    onnx_threads: int = Field(default=1, ge=1, le=64)
    retrieval: Literal["auto", "exact"] = Field(
        default="auto",
        description="auto: two-stage (ANN + exact re-scoring) when the bundle has an "
        "index; exact: always score the whole catalogue",
    )
    exact_min_batch: int | None = Field(
        default=None,
        ge=1,
        description="with an ANN index: batches of at least this many requests score "
        "the whole catalogue (cheaper per request past some size); unset: measured "
        "when the bundle loads; larger than MAX_INFERENCE_BATCH: never",
    )
    max_inference_batch: int = Field(default=64, ge=1, le=4096)
    # About 0.2 s of batched inference on the benchmark catalogue (docs/BENCHMARKS.md:
    # ~0.7 ms per request): past that, a 503 to retry elsewhere beats queueing.
    max_inference_queue: int = Field(
        default=256, ge=1, le=1_000_000, description="requests waiting for inference"
    )
    # A thread hand-off wakes two idle threads for a batch nobody could join; only
    # models with a short batch-1 step run inline (docs/BENCHMARKS.md, "Inline when
    # alone").
    inline_inference: bool = Field(
        default=True,
        description="a recommendation alone in its worker is ranked on the event "
        "loop (no batch to join, no thread hand-off); false: every ranking goes "
        "through the micro-batcher's inference thread",
    )
    # Per worker, every route but the probes and /metrics (service/admission.py):
    # at ~0.5-2 ms per request, 32 in flight bound an admitted request's wait to
    # tens of ms; past it a 503 in microseconds. 0 = no bound.
    max_in_flight: int = Field(
        default=32, ge=0, le=1_000_000, description="requests in flight per worker"
    )
    # The recommendation routes' time bound (service/admission.py): while even the
    # fastest of them took longer than this, a worker admits only what it finishes
    # in this long. Off by default: a client that keeps a fixed number of requests
    # in flight (a batch job, a replay) makes a standing queue of its own and would
    # be answered 503s it does not need; 20 ms is the measured setting for open,
    # user-facing traffic (README, docs/BENCHMARKS.md).
    shed_latency_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=60_000.0,
        description="standing-queue latency target, ms; 0 = no time bound",
    )

    # Redis
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_timeout_s: float = Field(
        default=0.08, gt=0.0, le=30.0, description="read path: bounds the fallback"
    )
    redis_write_timeout_s: float = Field(default=1.0, gt=0.0, le=60.0)
    redis_max_connections: int = Field(default=64, ge=1)
    # Redis is one server (replicas allowed) with no sharding proxy in front, so
    # one script may touch any keys: a batch of events costs a few script calls
    # instead of one per hash slot. Unset: yes for the embedded server, no for a
    # URL (a proxy such as twemproxy or Envoy refuses a call across slots).
    redis_cross_slot: bool | None = None
    data_dir: Path = Path("var")

    # Session state
    session_gap_s: float = Field(default=1800.0, gt=0.0)
    session_max_events: int = Field(default=200, ge=1, le=100_000)
    session_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    dedup_ttl_s: int = Field(default=24 * 3600, ge=1)
    # Event time (service.ingest): how far a client's clock may run ahead of
    # ours, and how late an event may arrive and still join its live session.
    max_clock_skew_s: float = Field(default=300.0, ge=0.0, allow_inf_nan=False)
    max_lateness_s: float = Field(default=6 * 3600.0, ge=0.0, allow_inf_nan=False)
    stream_maxlen: int = Field(
        default=1_000_000,
        ge=1,
        description="events kept in the live event log (approximately, MAXLEN ~)",
    )

    # Requests
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # Session policy (skiprec.policy): what becomes of tracks heard earlier in the
    # session. Unset: the bundle's, chosen on its run's validation sessions.
    skipped_rule: Rule | None = None
    skipped_penalty: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    played_rule: Rule | None = None
    played_penalty: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    api_key: SecretStr | None = None
    # skiprec serve refuses a non-loopback address without a key unless this is set.
    allow_unauthenticated: bool = False
    # Longest wait for a whole request body: a client that trickles one gets a 408.
    body_timeout_s: float = Field(default=10.0, gt=0.0, le=600.0)
    # POST /admin/reload only loads bundles under this folder; unset = the parent
    # of bundle_dir (the folder of versioned bundles beside `current`).
    bundle_root: Path | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("bundle_dir")
    @classmethod
    def _bundle_dir_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"SKIPREC_BUNDLE_DIR {str(value)!r} is not a directory")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if not value.startswith(REDIS_SCHEMES):
            raise ValueError(
                f"SKIPREC_REDIS_URL must start with one of {', '.join(REDIS_SCHEMES)}"
            )
        return value

    _split = field_validator("cors_origins", mode="before")(split_origins)

    @field_validator("api_key")
    @classmethod
    def _api_key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        return value

    @model_validator(mode="after")
    def _cluster_flag_from_url(self) -> Settings:
        node = cluster_node_url(self.redis_url) if self.redis_url else None
        if node is not None:
            self.redis_cluster = True
            self.redis_url = node
        if self.redis_cluster and self.redis_cross_slot:
            raise ValueError(
                "SKIPREC_REDIS_CROSS_SLOT=true cannot be used with a Redis Cluster, "
                "which refuses a script across hash slots; unset it"
            )
        if self.redis_cross_slot is None:
            self.redis_cross_slot = self.redis_url is None
        return self

    # Experiments (issue 15): served lists, their outcomes, A/B variants
    # (service/outcomes.py, service/variants.py).
    served_ttl_s: int = Field(
        default=1800,
        ge=1,
        le=7 * 24 * 3600,
        description="how long a served list waits for the listener's next event",
    )
    # A JSON object, or the path of a file holding one: name -> {"bundle", "share"}
    # (service/variants.py). Unset: one variant, "default", on bundle_dir.
    variants: str | None = None
    variant_salt: str = Field(default="skiprec", min_length=1, max_length=256)

    def variant_specs(self) -> tuple[VariantSpec, ...]:
        """The served variants (``SKIPREC_VARIANTS``, or the one default)."""
        if self.variants is None:
            return (VariantSpec(DEFAULT_VARIANT, self.bundle_dir, 1.0),)
        return parse_variants(self.variants, self.bundle_root or self.bundle_dir.parent)

    @model_validator(mode="after")
    def _variants_parse(self) -> Settings:
        self.variant_specs()  # refuse a bad table at startup, naming its field
        return self


def session_policy(settings: Settings, bundle_policy: SessionPolicy) -> SessionPolicy:
    """The bundle's policy with whatever the settings override."""
    return SessionPolicy(
        skipped=settings.skipped_rule or bundle_policy.skipped,
        played=settings.played_rule or bundle_policy.played,
        skipped_penalty=(
            bundle_policy.skipped_penalty
            if settings.skipped_penalty is None
            else settings.skipped_penalty
        ),
        played_penalty=(
            bundle_policy.played_penalty
            if settings.played_penalty is None
            else settings.played_penalty
        ),
    )


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()  # type: ignore[call-arg]  # bundle_dir comes from the environment
