"""The replay client through the live API reproduces the offline evaluation."""

from __future__ import annotations

import math
import random

import pytest

from benchmarks.replay import ReplaySession, rank_of, replay, sessions_from_examples
from skiprec.client import AsyncSkiprecClient
from training.splits import EvalExample


def test_sessions_are_rebuilt_from_their_examples():
    a = (("t1", False), ("t2", True), ("t3", False))
    b = (("t4", True), ("t5", False))
    examples = [
        EvalExample(a[:1], "t2", True),
        EvalExample(a[:2], "t3", False),
        EvalExample(b[:1], "t5", False),
    ]
    assert sessions_from_examples(examples) == [ReplaySession(a), ReplaySession(b)]


def test_rebuilt_sessions_keep_their_skip_levels():
    a = (("t1", False), ("t2", True), ("t3", False))
    examples = [
        EvalExample(a[:1], "t2", True, history_levels=(3,), target_level=0),
        EvalExample(a[:2], "t3", False, history_levels=(3, 0), target_level=2),
    ]
    (session,) = sessions_from_examples(examples)
    assert session == ReplaySession(a, levels=(3, 0, 2))


def test_rank_of_is_the_position_or_a_miss():
    assert rank_of("y", ["x", "y"]) == 1.0
    assert rank_of("z", ["x", "y"]) == math.inf


async def test_replay_matches_offline_evaluation_of_the_same_run(client, tiny_run_dir):
    from training.checkpoint import load_run
    from training.data import Session
    from training.evaluation import evaluate
    from training.scoring import TorchScorer
    from training.splits import session_examples

    rng = random.Random(0)
    sessions = []
    for i in range(25):
        length = rng.randint(2, 12)  # longer than max_seq_len=8: truncation counts too
        tracks = tuple(f"t{rng.randrange(60)}" for _ in range(length))  # t57+ are OOV
        skips = tuple(rng.random() < 0.4 for _ in range(length))
        sessions.append(Session(f"s{i}", tracks, skips))
    examples = [e for s in sessions for e in session_examples(s)]

    live_client = AsyncSkiprecClient(http_client=client)  # the app, in-process
    report = await replay(live_client, sessions_from_examples(examples), concurrency=8)

    run = load_run(tiny_run_dir)
    offline = evaluate(TorchScorer(run.model), examples, run.vocab)
    live = report["metrics"]
    assert live["num_examples"] == offline["num_examples"] == len(examples)
    for name in ("hr@10", "ndcg@10", "played/ndcg@10", "skipped/ndcg@10", "mrr@10"):
        assert live[name] == pytest.approx(offline[name], abs=1e-6), name
    assert report["fallbacks_after_first_event"] == 0
    assert report["cold_start"]["num_examples"] == 25
