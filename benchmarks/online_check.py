"""``skiprec online-check``: do the service's online outcome counters mean what they
say? The offline = online check of issue 15.

    skiprec online-check --data mssd_sessions_dev.csv.gz \\
        --variant production runs/prod bundles/prod 0.45 \\
        --variant plain runs/plain bundles/plain 0.45 --holdout 0.1 [--json OUT]

It starts a Redis and the service (uvicorn, ``--workers`` processes: the counters
live in Redis, so the workers must agree) serving the bundles as A/B variants
(``SKIPREC_VARIANTS``), then replays the held-out test sessions of each run's split
(``session_disjoint_split(seed)``, those ``skiprec evaluate`` scores) through the
live API as a listener's app would, with ``skiprec.client``: for each session a
fresh user, and before each event ``GET /recommendations?k=K``, then the event
(``POST /events``; the service attributes it to the list just served). It then
reads ``GET /admin/experiments`` alone and compares, per variant, the hit@K and
played/skipped hit rates over model answers with the offline evaluation of that
variant's run (``training.evaluation.rank_examples``, its transition prior and
its bundle's serving policy) on the sessions the service assigned to the variant,
both summarised by ``skiprec.outcomes.summarize``:

- *same sessions*: the offline rates on exactly the replayed sessions of the
  variant must equal the online ones (up to ``--tolerance``, for ties and float
  drift between torch and ONNX Runtime): the counters count what they claim;
- *all test sessions*: the offline rates on every test session must lie within
  sampling error of the online ones: z standard errors, 95% over all rows
  (Bonferroni), with the cluster-robust standard error over sessions. A listener
  answers many lists and they are correlated, so the service's per-list Wilson
  interval is too narrow by the design effect, which the report prints.

A holdout (``--holdout SHARE``) is served the popularity list of the first
variant's bundle; its offline twin ranks by that list. The first event of each
session is a cold start (the popularity fallback) and is counted apart by the
service, as ``skiprec replay`` reports it apart. Exit status 0 when every check
holds, 1 when one fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import httpx

from benchmarks import processes
from benchmarks.replay import ReplaySession, sessions_from_examples
from skiprec.bundle import load_bundle
from skiprec.client import AsyncSkiprecClient, Event
from skiprec.events import event_type
from skiprec.outcomes import Rate, summarize, tally_ranks
from skiprec.policy import SessionPolicy
from training.data import DataError, load_sessions
from training.evaluation import rank_examples, session_ids, target_skipped
from training.splits import EvalExample, session_disjoint_split

HOLDOUT = "holdout"
RATES = ("hit", "hit_played", "hit_skipped")


@dataclass(frozen=True)
class VariantArg:
    name: str
    run_dir: Path | None  # None: the holdout
    bundle_dir: Path | None
    share: float


@dataclass
class Replayed:
    """What the listeners saw: each session's variant, and the answers' kinds."""

    variants: list[str]
    model_answers: int = 0
    fallbacks_after_first_event: int = 0
    seconds: float = 0.0


async def replay_session(
    client: AsyncSkiprecClient,
    user_id: str,
    session: ReplaySession,
    k: int,
    semaphore: asyncio.Semaphore,
    replayed: Replayed,
) -> str:
    """One listener: before each event the list, then the event; its variant."""
    variants = set()
    async with semaphore:
        for t, (track_id, skipped) in enumerate(session.events):
            answer = await client.recommendations(user_id, k)
            variants.add(answer.variant or "")
            if t > 0:
                replayed.model_answers += not answer.fallback
                replayed.fallbacks_after_first_event += answer.fallback
            level = session.levels[t] if session.levels is not None else None
            await client.send_event(
                Event(
                    user_id,
                    track_id,
                    event_type(skipped),
                    skip_level=level,
                    event_id=f"e{t}",
                )
            )
    if len(variants) != 1:
        raise AssertionError(f"{user_id}: served by {sorted(variants)} (not sticky)")
    return variants.pop()


async def replay_all(
    base_url: str, sessions: Sequence[ReplaySession], k: int, concurrency: int
) -> Replayed:
    run_id = uuid.uuid4().hex[:8]
    replayed = Replayed(variants=[])
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    started = time.perf_counter()
    async with AsyncSkiprecClient(base_url, timeout=30.0, limits=limits) as client:
        replayed.variants = list(
            await asyncio.gather(
                *(
                    replay_session(
                        client, f"oc-{run_id}-{i}", s, k, semaphore, replayed
                    )
                    for i, s in enumerate(sessions)
                )
            )
        )
    replayed.seconds = time.perf_counter() - started
    return replayed


async def read_experiments(base_url: str, k: int) -> dict[str, Any]:
    async with AsyncSkiprecClient(base_url, timeout=30.0) as client:
        return await client.experiments(k=k)


def offline_ranks(
    variant: VariantArg,
    examples: Sequence[EvalExample],
    popular: Sequence[str],
    k: int,
) -> list[float]:
    """The variant's offline ranks of ``examples`` (0-based, inf a miss): its run's
    ranks under its bundle's policy, or (holdout) the rank in the popularity list."""
    if variant.run_dir is None:
        position = {track: rank for rank, track in enumerate(popular[:k])}
        return [float(position.get(e.target, math.inf)) for e in examples]
    from training.checkpoint import load_run  # torch: only the model variants
    from training.scoring import TorchScorer

    assert variant.bundle_dir is not None
    run = load_run(variant.run_dir)
    recorded = load_bundle(variant.bundle_dir).manifest.policy
    policy = recorded.session_policy() if recorded else SessionPolicy()
    ranked = rank_examples(
        TorchScorer(run.model, prior=run.prior), examples, run.vocab, (policy,)
    )
    return [float(rank) for rank in ranked.ranks[0]]


def indicators(
    ranks: Sequence[float], skipped: Sequence[bool], k: int
) -> dict[str, list[bool]]:
    """Per example, whether it counts as a success of each rate."""
    hit = [rank < k for rank in ranks]
    return {
        "hit": hit,
        "hit_played": [h and not s for h, s in zip(hit, skipped, strict=True)],
        "hit_skipped": [h and s for h, s in zip(hit, skipped, strict=True)],
    }


def cluster_standard_error(successes: Sequence[bool], sessions: Sequence[int]) -> float:
    """The standard error of a rate over lists when each listener (session) gives
    many correlated lists: the ratio estimator's cluster-robust (sandwich)
    variance, ``m/(m-1) * sum_i (y_i - p n_i)^2 / (sum_i n_i)^2`` over the m
    sessions (y_i successes of n_i lists). Wilson's interval assumes independent
    lists and is too narrow here by the design effect."""
    y: dict[int, int] = {}
    n: dict[int, int] = {}
    for success, session in zip(successes, sessions, strict=True):
        y[session] = y.get(session, 0) + int(success)
        n[session] = n.get(session, 0) + 1
    m, total = len(n), sum(n.values())
    if m < 2:
        return math.inf
    p = sum(y.values()) / total
    spread = sum((y[i] - p * n[i]) ** 2 for i in n)
    return math.sqrt(m / (m - 1) * spread) / total


def popularity_list(bundle_dir: Path) -> list[str]:
    """The bundle's popularity order, as the service serves it (count, then id)."""
    counts = json.loads((bundle_dir / "popularity.json").read_text())
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def online_rates(experiments: dict[str, Any], variant: str) -> dict[str, Any]:
    arms = [a for a in experiments["arms"] if a["variant"] == variant]
    if len(arms) != 1:
        raise AssertionError(f"{variant}: {len(arms)} arms on /admin/experiments")
    arm: dict[str, Any] = arms[0]
    return arm


def _rate(rate: Rate) -> dict[str, Any]:
    return {
        "value": rate.value,
        "low": rate.low,
        "high": rate.high,
        "successes": rate.successes,
        "trials": rate.trials,
    }


def compare(
    variants: Sequence[VariantArg],
    experiments: dict[str, Any],
    served: dict[str, list[tuple[EvalExample, int]]],
    everyone: Sequence[EvalExample],
    k: int,
    tolerance: float,
) -> tuple[list[dict[str, Any]], bool]:
    """Per variant and rate: online, offline on the same sessions, offline on all.

    The "within sampling error" check is two-sided at 95% overall (Bonferroni over
    every row), with the cluster-robust standard error of the variant's sample.
    """
    first = next(v.bundle_dir for v in variants if v.bundle_dir is not None)
    popular = popularity_list(first)
    z = NormalDist().inv_cdf(1 - 0.05 / (2 * len(variants) * len(RATES)))
    rows: list[dict[str, Any]] = []
    ok = True
    for variant in variants:
        arm = online_rates(experiments, variant.name)
        mine = [example for example, _ in served[variant.name]]
        owners = [session for _, session in served[variant.name]]
        ranks = offline_ranks(variant, mine, popular, k)
        same = summarize(tally_ranks(ranks, target_skipped(mine)), k)
        whole = summarize(
            tally_ranks(
                offline_ranks(variant, everyone, popular, k), target_skipped(everyone)
            ),
            k,
        )
        success = indicators(ranks, list(target_skipped(mine)), k)
        for name in RATES:
            online = arm["rates"][name]
            offline = same[name].value
            equal = (
                same[name].trials == online["trials"]
                and offline is not None
                and abs(online["value"] - offline) <= tolerance
            )
            se = cluster_standard_error(success[name], owners)
            binomial = math.sqrt(
                online["value"] * (1 - online["value"]) / online["trials"]
            )
            gap = abs((whole[name].value or 0.0) - online["value"])
            within = gap <= z * se
            ok = ok and equal and within
            rows.append(
                {
                    "variant": variant.name,
                    "model_version": arm["model_version"],
                    "rate": name,
                    "online": online,
                    "offline_same_sessions": _rate(same[name]),
                    "offline_all_test_sessions": _rate(whole[name]),
                    "same_sessions_equal": equal,
                    "cluster_standard_error": se,
                    "design_effect": (se / binomial) ** 2 if binomial else None,
                    "z": z,
                    "all_sessions_within_sampling_error": within,
                }
            )
    return rows, ok


def run_check(
    args: argparse.Namespace, variants: list[VariantArg]
) -> tuple[dict[str, Any], bool]:
    sessions = load_sessions(args.data, args.format)
    examples = session_disjoint_split(sessions, seed=args.seed).test
    replay = sessions_from_examples(examples)
    owner = session_ids(examples)
    if args.limit is not None:
        replay = replay[: args.limit]
        examples = [e for e, i in zip(examples, owner, strict=True) if i < args.limit]
        owner = owner[owner < args.limit]
    table = {
        v.name: {
            "bundle": str(v.bundle_dir.resolve()) if v.bundle_dir else None,
            "share": v.share,
        }
        for v in variants
    }
    first = next(v.bundle_dir for v in variants if v.bundle_dir is not None)
    with tempfile.TemporaryDirectory(prefix="skiprec-online-check-") as work:
        work_dir = Path(work)
        binary = processes.redis_server_binary(allow_embedded=True)
        with processes.redis_server(work_dir / "redis", binary=binary) as redis:
            env = processes.service_env(
                first.resolve(),
                redis.url,
                variants=json.dumps(table),
                variant_salt=args.salt,
                # Under a replay's load a spurious read timeout would turn a model
                # answer into a fallback; this check is about attribution.
                redis_timeout_s="1.0",
            )
            command = processes.uvicorn_command(
                "service.main:app", workers=args.workers
            )
            with processes.http_server(
                command, work_dir / "service.log", env=env
            ) as api:
                replayed = asyncio.run(
                    replay_all(api.base_url, replay, args.k, args.concurrency)
                )
                experiments = asyncio.run(read_experiments(api.base_url, args.k))
    served: dict[str, list[tuple[EvalExample, int]]] = {v.name: [] for v in variants}
    for example, session in zip(examples, owner, strict=True):
        served[replayed.variants[session]].append((example, int(session)))
    rows, ok = compare(variants, experiments, served, examples, args.k, args.tolerance)
    sessions_by_variant = {
        name: replayed.variants.count(name) for name in (v.name for v in variants)
    }
    report = {
        "k": args.k,
        "sessions": len(replay),
        "examples": len(examples),
        "sessions_by_variant": sessions_by_variant,
        "workers": args.workers,
        "replay_seconds": replayed.seconds,
        "model_answers_after_first_event": replayed.model_answers,
        "fallbacks_after_first_event": replayed.fallbacks_after_first_event,
        "experiments": experiments,
        "rows": rows,
        "ok": ok,
    }
    return report, ok


def print_report(report: dict[str, Any]) -> None:
    k = report["k"]
    print(
        f"replayed {report['sessions']} sessions ({report['examples']} scored "
        f"events) in {report['replay_seconds']:.1f}s over {report['workers']} "
        f"workers; sessions per variant {report['sessions_by_variant']}; "
        f"fallbacks after the first event: {report['fallbacks_after_first_event']}"
    )
    print(
        f"| variant | rate@{k} | online (95% Wilson) | offline, same sessions "
        "| offline, all test sessions | same = online | design effect "
        "| all within z*SE |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in report["rows"]:
        online, same, whole = (
            row["online"],
            row["offline_same_sessions"],
            row["offline_all_test_sessions"],
        )
        print(
            f"| {row['variant']} | {row['rate']} | {online['value']:.4f} "
            f"[{online['low']:.4f}, {online['high']:.4f}] (n={online['trials']}) "
            f"| {same['value']:.4f} (n={same['trials']}) "
            f"| {whole['value']:.4f} (n={whole['trials']}) "
            f"| {'yes' if row['same_sessions_equal'] else 'NO'} "
            f"| {row['design_effect']:.2f} "
            f"| {'yes' if row['all_sessions_within_sampling_error'] else 'NO'} "
            f"(z={row['z']:.2f}, SE={row['cluster_standard_error']:.4f}) |"
        )
    print("offline = online:", "ok" if report["ok"] else "FAILED")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec online-check",
        description="Replay held-out sessions through two or more live A/B variants "
        "and check /admin/experiments against each run's offline evaluation.",
    )
    # --- data ---
    parser.add_argument("--data", type=Path, required=True, help="session data file")
    parser.add_argument("--format", help="data format (default: detected)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (the runs')")
    parser.add_argument("--limit", type=int, help="replay only the first N sessions")
    # --- variants ---
    parser.add_argument(
        "--variant",
        nargs=4,
        action="append",
        required=True,
        metavar=("NAME", "RUN_DIR", "BUNDLE_DIR", "SHARE"),
        help="a variant: its name, training run, exported bundle and share",
    )
    parser.add_argument(
        "--holdout", type=float, help="share served the popularity list"
    )
    parser.add_argument("--salt", default="online-check", help="assignment salt")
    # --- service and replay ---
    parser.add_argument("--k", type=int, default=10, help="list length and cut-off")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="sessions in flight"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.002,
        help="largest |online - offline| on the same sessions (ties, float drift)",
    )
    # --- output ---
    parser.add_argument("--json", type=Path, help="write the report as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        variants = [
            VariantArg(name, Path(run), Path(bundle), float(share))
            for name, run, bundle, share in args.variant
        ]
    except ValueError as exc:
        print(f"skiprec online-check: --variant SHARE: {exc}", file=sys.stderr)
        return 2
    if args.holdout:
        variants.append(VariantArg(HOLDOUT, None, None, args.holdout))
    if abs(sum(v.share for v in variants) - 1.0) > 1e-6:
        print("skiprec online-check: the shares must sum to 1", file=sys.stderr)
        return 2
    try:
        report, ok = run_check(args, variants)
    except (DataError, OSError) as exc:
        print(f"skiprec online-check: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
