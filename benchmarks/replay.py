"""``skiprec replay``: held-out sessions through the live HTTP API, the evaluation
of record.

    skiprec replay --data SESSIONS --url http://127.0.0.1:8000 [--json OUT]

It lives with the other live-service tools (``benchmarks.load``, ``benchmarks.soak``)
because it is an HTTP client of a running service (through ``skiprec.client``, whose
retries are safe: every event carries an id); the data, splits and metrics it
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

from skiprec.client import AsyncSkiprecClient, Event, RetryPolicy, SkiprecError
from skiprec.events import event_type
from training.data import DataError, load_sessions
from training.metrics import summarize
from training.splits import EvalExample, leave_one_out_split, session_disjoint_split

RETRY = RetryPolicy(max_attempts=5)  # 0.1, 0.2, 0.4, 0.8 s apart (less jitter)
TIMEOUT_S = 30.0
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


def rank_of(target: str, track_ids: Sequence[str]) -> float:
    for position, track_id in enumerate(track_ids):
        if track_id == target:
            return float(position)
    return math.inf


class Replayer:
    """Replays sessions through ``skiprec.client``: its retries (transport errors,
    503) are safe because every event carries an id, so a retried POST is a
    duplicate for the service, never a second play."""

    def __init__(
        self,
        client: AsyncSkiprecClient,
        concurrency: int = 32,
        exclude_played: bool | None = None,
    ) -> None:
        self.client = client
        self.semaphore = asyncio.Semaphore(concurrency)
        self.exclude_played = exclude_played
        self.run_id = uuid.uuid4().hex[:8]
        self.result = ReplayResult()

    async def _recommend(self, user_id: str) -> tuple[list[str], bool]:
        started = time.perf_counter()
        answer = await self.client.recommendations(
            user_id, K, exclude_played=self.exclude_played
        )
        self.result.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.result.model_versions.add(answer.model_version)
        return answer.track_ids, answer.fallback

    async def replay_session(self, index: int, session: ReplaySession) -> None:
        user_id = f"replay-{self.run_id}-{index}"
        async with self.semaphore:
            await self.client.delete_session(user_id)
            pending: list[Event] = []
            for t, (track_id, skipped) in enumerate(session.events):
                if t == 0 or t >= session.scored_from:
                    if pending:
                        await self.client.send_events(pending)
                        pending = []
                    track_ids, fallback = await self._recommend(user_id)
                    rank = rank_of(track_id, track_ids)
                    if t == 0:
                        self.result.cold_ranks.append(rank)
                        self.result.cold_skipped.append(skipped)
                    else:
                        self.result.ranks.append(rank)
                        self.result.skipped.append(skipped)
                        self.result.fallbacks += fallback
                level = session.levels[t] if session.levels is not None else None
                pending.append(
                    Event(
                        user_id,
                        track_id,
                        event_type(skipped),
                        skip_level=level,
                        event_id=f"e{t}",
                    )
                )
            await self.client.send_events(pending)

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
    url: str | AsyncSkiprecClient,
    sessions: Sequence[ReplaySession],
    concurrency: int = 32,
    exclude_played: bool | None = None,
    api_key: str | None = None,
) -> dict[str, object]:
    """Replay ``sessions`` against a base URL (or a ready client, which has its own
    API key); the report dict."""
    if isinstance(url, AsyncSkiprecClient):
        return report(await Replayer(url, concurrency, exclude_played).run(sessions))
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency
    )
    async with AsyncSkiprecClient(
        url, api_key=api_key, timeout=TIMEOUT_S, retry=RETRY, limits=limits
    ) as client:
        return report(await Replayer(client, concurrency, exclude_played).run(sessions))


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
    except SkiprecError as exc:
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
