"""``skiprec replay``: held-out sessions through the live HTTP API, the evaluation
of record.

    skiprec replay --data SESSIONS --url http://127.0.0.1:8000 [--json OUT]

It lives with the other live-service tools (``benchmarks.load``, ``benchmarks.soak``)
because it is an HTTP client of a running service; the data, splits and metrics it
scores with come from ``training``, so its numbers equal the offline evaluation's.

For each session (default: the test sessions of ``session_disjoint_split(seed=0)``,
exactly those ``skiprec evaluate`` scores; ``--split loo`` the leave-one-out test
targets; ``--all`` every session in the file), a fresh user id is reset with
``DELETE /users/{id}/session``; then before each event ``GET /recommendations`` is
asked and the real event (play or skip) is posted. Position 0 of a session is a
cold start (the popularity fallback) and is reported separately. Ranks are the
target's position in the returned top-k (a miss is +inf), summarised with
``training.metrics.summarize`` like the offline evaluation. Sessions run
concurrently; events within a session strictly in order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from skiprec.events import event_type
from training.data import DataError, load_sessions
from training.metrics import summarize
from training.splits import EvalExample, leave_one_out_split, session_disjoint_split

RETRIES = 4
K = 20  # the largest cut-off summarize reports; deeper ranks change no metric


@dataclass(frozen=True)
class ReplaySession:
    """Events ``(track_id, skipped)``, oldest first; scored from ``scored_from`` on.

    ``levels``: each event's skip level when the data has grades (posted as
    ``skip_level``, as a client that knows them would), else None.
    """

    events: tuple[tuple[str, bool], ...]
    scored_from: int = 1
    levels: tuple[int | None, ...] | None = None


@dataclass
class ReplayResult:
    ranks: list[float] = field(default_factory=list)
    skipped: list[bool] = field(default_factory=list)
    cold_ranks: list[float] = field(default_factory=list)
    cold_skipped: list[bool] = field(default_factory=list)
    fallbacks: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    model_versions: set[str] = field(default_factory=set)


def sessions_from_examples(examples: Sequence[EvalExample]) -> list[ReplaySession]:
    """Rebuild whole sessions from ``session_examples`` (histories grow by one)."""
    sessions: list[ReplaySession] = []
    for i, example in enumerate(examples):
        is_last = i + 1 == len(examples) or len(examples[i + 1].history) == 1
        if is_last:
            target = (example.target, example.target_skipped)
            sessions.append(
                ReplaySession((*example.history, target), levels=_levels_of(example))
            )
    return sessions


def _levels_of(example: EvalExample) -> tuple[int | None, ...] | None:
    if example.history_levels is None:
        return None
    return (*example.history_levels, example.target_level)


def loo_sessions(examples: Sequence[EvalExample]) -> list[ReplaySession]:
    """Leave-one-out: only the last event of each session is scored."""
    return [
        ReplaySession(
            (*e.history, (e.target, e.target_skipped)),
            scored_from=len(e.history),
            levels=_levels_of(e),
        )
        for e in examples
    ]


def rank_of(target: str, items: Sequence[dict[str, object]]) -> float:
    for position, item in enumerate(items):
        if item["track_id"] == target:
            return float(position)
    return math.inf


class Replayer:
    def __init__(
        self,
        client: httpx.AsyncClient,
        concurrency: int = 32,
        exclude_played: bool | None = None,
        api_key: str | None = None,
    ) -> None:
        self.client = client
        self.semaphore = asyncio.Semaphore(concurrency)
        self.params: dict[str, str | int] = {"k": K}
        if exclude_played is not None:
            self.params["exclude_played"] = str(exclude_played).lower()
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.run_id = uuid.uuid4().hex[:8]
        self.result = ReplayResult()

    async def _request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        """One request, retried on transport errors and 503 (events carry ids, so a
        retried POST is deduplicated by the service, never double-counted)."""
        for attempt in range(RETRIES + 1):
            try:
                response = await self.client.request(method, url, **kwargs)  # type: ignore[arg-type]
            except httpx.TransportError:
                if attempt == RETRIES:
                    raise
            else:
                if response.status_code != 503 or attempt == RETRIES:
                    response.raise_for_status()
                    return response
            await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    async def _recommend(self, user_id: str) -> tuple[list[dict[str, object]], bool]:
        started = time.perf_counter()
        response = await self._request(
            "GET",
            f"/recommendations/{user_id}",
            params=self.params,
            headers=self.headers,
        )
        self.result.latencies_ms.append((time.perf_counter() - started) * 1000)
        body = response.json()
        self.result.model_versions.add(body["model_version"])
        return body["items"], bool(body["fallback"])

    async def _post(self, events: list[dict[str, object]]) -> None:
        await self._request(
            "POST", "/events", json={"events": events}, headers=self.headers
        )

    async def replay_session(self, index: int, session: ReplaySession) -> None:
        user_id = f"replay-{self.run_id}-{index}"
        async with self.semaphore:
            await self._request(
                "DELETE", f"/users/{user_id}/session", headers=self.headers
            )
            pending: list[dict[str, object]] = []
            for t, (track_id, skipped) in enumerate(session.events):
                if t == 0 or t >= session.scored_from:
                    if pending:
                        await self._post(pending)
                        pending = []
                    items, fallback = await self._recommend(user_id)
                    rank = rank_of(track_id, items)
                    if t == 0:
                        self.result.cold_ranks.append(rank)
                        self.result.cold_skipped.append(skipped)
                    else:
                        self.result.ranks.append(rank)
                        self.result.skipped.append(skipped)
                        self.result.fallbacks += fallback
                event: dict[str, object] = {
                    "event_id": f"e{t}",
                    "user_id": user_id,
                    "track_id": track_id,
                    "type": event_type(skipped),
                }
                level = session.levels[t] if session.levels is not None else None
                if level is not None:
                    event["skip_level"] = level
                pending.append(event)
            await self._post(pending)

    async def run(self, sessions: Sequence[ReplaySession]) -> ReplayResult:
        await asyncio.gather(
            *(self.replay_session(i, s) for i, s in enumerate(sessions))
        )
        return self.result


def report(result: ReplayResult) -> dict[str, object]:
    latencies = np.asarray(result.latencies_ms or [math.nan])
    return {
        "metrics": summarize(np.asarray(result.ranks), np.asarray(result.skipped)),
        "cold_start": summarize(
            np.asarray(result.cold_ranks), np.asarray(result.cold_skipped)
        ),
        "fallbacks_after_first_event": result.fallbacks,
        "model_versions": sorted(result.model_versions),
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)),
            "requests": len(result.latencies_ms),
        },
    }


async def replay(
    url: str | httpx.AsyncClient,
    sessions: Sequence[ReplaySession],
    concurrency: int = 32,
    exclude_played: bool | None = None,
    api_key: str | None = None,
) -> dict[str, object]:
    """Replay ``sessions`` against a base URL (or a ready client); the report dict."""
    if isinstance(url, httpx.AsyncClient):
        replayer = Replayer(url, concurrency, exclude_played, api_key)
        return report(await replayer.run(sessions))
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency
    )
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        replayer = Replayer(client, concurrency, exclude_played, api_key)
        return report(await replayer.run(sessions))


def select_sessions(
    path: Path, format: str | None, split: str, seed: int, everything: bool
) -> list[ReplaySession]:
    sessions = load_sessions(path, format)
    if everything:
        return [
            ReplaySession(
                tuple(zip(s.track_ids, s.skipped, strict=True)), levels=s.levels
            )
            for s in sessions
            if len(s) >= 1
        ]
    if split == "loo":
        return loo_sessions(leave_one_out_split(sessions).test)
    return sessions_from_examples(session_disjoint_split(sessions, seed=seed).test)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec replay",
        description="Replay held-out sessions through a running skiprec service.",
    )
    # --- data ---
    parser.add_argument("--data", type=Path, required=True, help="session data file")
    parser.add_argument("--format", help="data format (default: detected)")
    parser.add_argument(
        "--split",
        choices=["session", "loo"],
        default="session",
        help="which held-out sessions (the same as skiprec evaluate)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument(
        "--all", action="store_true", help="replay every session in the file"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="replay only the first N sessions"
    )
    # --- service ---
    parser.add_argument("--url", required=True, help="service base URL")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="sessions in flight"
    )
    parser.add_argument(
        "--exclude-played",
        choices=["true", "false"],
        default=None,
        help="override the service's SKIPREC_EXCLUDE_PLAYED",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SKIPREC_API_KEY"),
        help="API key (default: SKIPREC_API_KEY)",
    )
    # --- output ---
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sessions = select_sessions(
            args.data, args.format, args.split, args.seed, args.all
        )
    except (DataError, ValueError, OSError) as exc:
        print(f"skiprec replay: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        sessions = sessions[: args.limit]
    exclude = None if args.exclude_played is None else args.exclude_played == "true"
    started = time.perf_counter()
    try:
        result = asyncio.run(
            replay(args.url, sessions, args.concurrency, exclude, args.api_key)
        )
    except httpx.HTTPError as exc:
        print(f"skiprec replay: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    metrics = result["metrics"]
    cold = result["cold_start"]
    assert isinstance(metrics, dict) and isinstance(cold, dict)
    print(f"replayed {len(sessions)} sessions in {elapsed:.1f}s")
    for name in ("hr@10", "ndcg@10", "played/ndcg@10", "skipped/ndcg@10", "mrr@10"):
        print(f"  {name:<18} {metrics[name]:.4f}")
    print(f"  {'examples':<18} {int(metrics['num_examples'])}")
    print(f"  cold start hr@10 {cold['hr@10']:.4f} over {int(cold['num_examples'])}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
