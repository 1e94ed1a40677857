#!/usr/bin/env bash
# End-to-end smoke test of the Docker images and docker-compose.yml (`make compose-smoke`).
#
# Builds both images, runs the one-shot trainer, brings up redis + api, then talks to the
# API through its published port: posts plays and skips, reads recommendations and the
# session back, restarts the api container to show the session lives in Redis, and checks
# that the api image has no torch. Everything is torn down (volumes included) on exit.
#
# Environment:
#   DOCKER_LOCAL   docker-local helper to start a private engine (default:
#                  ../shared/tools/docker-local); set it empty to use the docker already
#                  configured in this shell.
#   API_PORT       host port for the api (default 18000, so a running `make demo` is left alone)
#   SMOKE_KEEP=1   leave the stack running after the checks
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER_LOCAL=${DOCKER_LOCAL-../shared/tools/docker-local}
export API_PORT=${API_PORT:-18000}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-skiprec-smoke}
start=$SECONDS

step() { printf '\n== %s (t=%ss)\n' "$*" "$((SECONDS - start))"; }

if [ -n "$DOCKER_LOCAL" ]; then
  step "starting the local Docker engine ($DOCKER_LOCAL up)"
  eval "$("$DOCKER_LOCAL" up)"
fi
docker compose version

teardown() {
  status=$?
  if [ "${SMOKE_KEEP:-0}" = 1 ]; then
    echo "SMOKE_KEEP=1: stack left running (docker compose -p $COMPOSE_PROJECT_NAME down -v)"
  else
    if [ "$status" -ne 0 ]; then
      echo "--- api logs (last 40 lines) ---"
      docker compose logs --no-color --tail 40 api trainer 2>/dev/null || true
    fi
    step "tearing down"
    docker compose down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  rm -f "${checker:-}"
  if [ "$status" -eq 0 ]; then
    echo "compose-smoke: PASSED in $((SECONDS - start)) s"
  else
    echo "compose-smoke: FAILED (exit $status) after $((SECONDS - start)) s" >&2
  fi
  exit "$status"
}
trap teardown EXIT

step "docker compose build"
docker compose build

step "api image must not contain torch"
packages=$(docker run --rm --entrypoint pip skiprec-api:local list --format freeze)
if grep -qi '^torch==' <<<"$packages"; then
  echo "torch is installed in the api image" >&2
  exit 1
fi
grep -iE '^(fastapi|uvicorn|redis|onnxruntime|skiprec)==' <<<"$packages"

step "docker compose run --rm trainer (synthetic data -> train -> export)"
docker compose run --rm trainer
step "trainer again: must skip, the bundle exists"
# (captured, not tee'd to /dev/stderr: reopening that truncates a log file it points to)
second_run=$(docker compose run --rm trainer 2>&1)
echo "$second_run"
grep -q "bundle already at" <<<"$second_run"

step "docker compose up -d --wait redis api"
docker compose up -d --wait redis api
docker compose ps

checker=$(mktemp)
cat >"$checker" <<'PY'
import json
import sys
import time
import urllib.request

base, phase = sys.argv[1], sys.argv[2]
user = "smoke-listener"


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return response.status, dict(response.headers), json.loads(raw) if raw else None


def check(condition, message):
    print(("ok   " if condition else "FAIL ") + message)
    if not condition:
        sys.exit(1)


if phase == "check":
    status, _, _ = call("GET", "/healthz")
    check(status == 200, "GET /healthz -> 200")
    status, _, _ = call("GET", "/readyz")
    check(status == 200, "GET /readyz -> 200")
    with urllib.request.urlopen(base + "/", timeout=10) as response:
        page = response.read().decode()
    check("skiprec" in page and "rec-list" in page, "GET / serves the demo page")
    with urllib.request.urlopen(base + "/static/app.js", timeout=10) as response:
        check(response.status == 200, "GET /static/app.js -> 200")

    call("DELETE", f"/users/{user}/session")
    _, headers, cold = call("GET", f"/recommendations/{user}?k=10")
    check(cold["fallback"] is True, f"cold start: fallback=true ({headers.get('x-skiprec-fallback')})")
    cold_ids = [item["track_id"] for item in cold["items"]]
    check(len(cold_ids) == 10, f"cold start: 10 items ({cold_ids[:3]}...)")

    played, skipped = cold_ids[0], cold_ids[1]
    now = time.time()
    events = [
        {"event_id": "smoke-1", "user_id": user, "track_id": played, "type": "play", "timestamp": now - 30},
        {"event_id": "smoke-2", "user_id": user, "track_id": skipped, "type": "skip", "timestamp": now},
    ]
    status, _, body = call("POST", "/events", {"events": events})
    check(status == 202 and body["accepted"] == 2, f"POST /events (play {played}, skip {skipped}) -> 202 {body}")
    status, _, body = call("POST", "/events", events[1])
    check(status == 202 and body["duplicates"] == 1, f"re-posting event_id smoke-2 is a duplicate {body}")

    _, headers, warm = call("GET", f"/recommendations/{user}?k=10")
    warm_ids = [item["track_id"] for item in warm["items"]]
    check(warm["fallback"] is False, f"after events: fallback=false ({headers.get('x-skiprec-fallback')})")
    check(bool(warm.get("model_version")), f"model_version={warm.get('model_version')}")
    # No rule removes the skipped track (the bundle serves the policy its run chose on
    # validation); the session reshapes the list.
    check(warm_ids != cold_ids, "after play+skip: the list is no longer the cold-start one")
    status, _, ranked = call("POST", f"/recommendations/{user}/rank", {"candidates": [played, skipped]})
    check(status == 200 and len(ranked["items"]) + len(ranked["unranked"]) == 2,
          f"POST /recommendations/{user}/rank ranks both candidates {ranked}")
    check(len(warm_ids) == 10, "after events: 10 items")
    scores = [item["score"] for item in warm["items"]]
    check(scores == sorted(scores, reverse=True), "scores are sorted, best first")
    print(f"     recommendations after play+skip: {warm_ids}")

_, _, session = call("GET", f"/users/{user}/session")
got = [(event["track_id"], event["type"]) for event in session["events"]]
check(len(got) == 2 and got[1][1] == "skip", f"[{phase}] GET /users/{user}/session: {got}")
check(session["skip_rate"] == 0.5, f"[{phase}] skip_rate={session['skip_rate']}")
with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
    metrics = response.read().decode()
check(response.status == 200 and "# TYPE" in metrics, f"[{phase}] GET /metrics is Prometheus text")
PY

step "API checks through http://127.0.0.1:$API_PORT"
python3 "$checker" "http://127.0.0.1:$API_PORT" check

step "restart redis and api: the session must survive (Redis AOF on the named volume)"
docker compose restart redis api
docker compose up -d --wait redis api
python3 "$checker" "http://127.0.0.1:$API_PORT" after-restart
rm -f "$checker"
