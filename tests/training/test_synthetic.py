"""Synthetic generator: deterministic per seed, linear work, skips and timing as its
generative story says, round-trips through the event log, and learnable (sequence
baselines beat popularity by a wide margin)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from skiprec.vocab import Vocabulary
from training import synthetic
from training.baselines import MarkovScorer, PopularityScorer
from training.cli.synth import main
from training.data import Session, load_sessions
from training.evaluation import evaluate
from training.splits import Split
from training.synthetic import SyntheticConfig, generate_sessions


def test_generate_sessions_is_deterministic_per_seed() -> None:
    first = generate_sessions(num_sessions=50, num_tracks=100, num_clusters=5, seed=7)
    again = generate_sessions(num_sessions=50, num_tracks=100, num_clusters=5, seed=7)
    other = generate_sessions(num_sessions=50, num_tracks=100, num_clusters=5, seed=8)
    assert first == again
    assert first != other


def test_generate_sessions_shape(synthetic_sessions: list[Session]) -> None:
    config = SyntheticConfig()
    assert len(synthetic_sessions) == 600
    assert all(
        config.min_length <= len(s) <= config.max_length for s in synthetic_sessions
    )
    assert len({s.session_id for s in synthetic_sessions}) == 600
    tracks = {t for s in synthetic_sessions for t in s.track_ids}
    assert tracks <= {f"t{i}" for i in range(300)}
    events = sum(map(len, synthetic_sessions))
    skip_rate = sum(sum(s.skipped) for s in synthetic_sessions) / events
    assert 0.15 < skip_rate < 0.6
    for session in synthetic_sessions:
        assert session.timestamps is not None
        assert list(session.timestamps) == sorted(session.timestamps)


def test_synthetic_round_trips_through_event_log(tmp_path: Path) -> None:
    path = tmp_path / "synth.csv"
    assert main(["--out", str(path), "--sessions", "600", "--tracks", "300"]) == 0
    written = generate_sessions(num_sessions=600, num_tracks=300, seed=0)
    assert load_sessions(path) == written


def _traced_lines(config: SyntheticConfig) -> tuple[int, int]:
    """(lines of training/synthetic.py executed, events generated) for ``config``.

    Executed lines count the generator's work exactly and the same on any machine,
    where a wall-clock limit on a shared machine measures its neighbours too.
    """
    lines = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal lines
        lines += event == "line"
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code.co_filename == synthetic.__file__ else None

    sys.settrace(calls)
    try:
        sessions = generate_sessions(config=config)
    finally:
        sys.settrace(None)
    return lines, sum(map(len, sessions))


def test_generator_work_is_linear_in_events_and_tracks() -> None:
    per_event: dict[int, float] = {}
    setup: dict[int, float] = {}
    for tracks in (500, 2000):
        (lines_1, events_1), (lines_2, events_2), (lines_3, events_3) = (
            _traced_lines(
                SyntheticConfig(num_sessions=n, num_tracks=tracks, num_clusters=10)
            )
            for n in (100, 200, 300)
        )
        # Lines per extra event between consecutive sizes: constant when the work is
        # linear in the events, growing when it is not.
        first = (lines_2 - lines_1) / (events_2 - events_1)
        per_event[tracks] = (lines_3 - lines_2) / (events_3 - events_2)
        assert per_event[tracks] == pytest.approx(first, rel=0.02)
        setup[tracks] = lines_1 - per_event[tracks] * events_1
    # An event costs the same in a 4x larger catalogue (no per-event catalogue scan),
    # and the catalogue is set up in time linear in its size.
    assert per_event[2000] == pytest.approx(per_event[500], rel=0.02)
    assert setup[2000] == pytest.approx(4 * setup[500], rel=0.1)


def test_skips_come_from_the_distance_to_the_taste() -> None:
    """Skip probability 0 on the taste cluster and 1 anywhere else: a log that always
    follows the taste has no skip; one of pure noise skips all but 1/num_clusters."""
    story = {"num_sessions": 400, "num_tracks": 200, "num_clusters": 10}
    on_taste = generate_sessions(
        config=SyntheticConfig(
            **story,
            drift_prob=0.0,
            on_taste_prob=1.0,
            skip_prob_by_distance=(0.0, 1.0),
        )
    )
    assert not any(any(s.skipped) for s in on_taste)
    noise = generate_sessions(
        config=SyntheticConfig(
            **story,
            sequel_prob=0.0,
            on_taste_prob=0.0,
            skip_prob_by_distance=(0.0, 1.0),
        )
    )
    events = sum(map(len, noise))
    skip_rate = sum(sum(s.skipped) for s in noise) / events
    assert skip_rate == pytest.approx(1 - 1 / 10, abs=0.02)


def test_timing_follows_the_story(synthetic_sessions: list[Session]) -> None:
    """A skip lasts 3-29 s and a play 120-299 s; a user's next session starts two
    hours or more after the last one ended, far beyond the 30-minute session gap."""
    last_end: dict[str, float] = {}
    for session in synthetic_sessions:
        times = session.timestamps
        assert times is not None
        steps = zip(session.skipped[:-1], times[:-1], times[1:], strict=True)
        for skipped, start, end in steps:
            assert (3 <= end - start < 30) if skipped else (120 <= end - start < 300)
        user = session.session_id.split("#")[0]
        if user in last_end:
            assert times[0] - last_end[user] >= 2 * 3600
        last_end[user] = times[-1]


def test_synthetic_is_learnable(
    synthetic_split: Split, synthetic_vocab: Vocabulary
) -> None:
    popular = evaluate(
        PopularityScorer.fit(synthetic_split.train, synthetic_vocab),
        synthetic_split.test,
        synthetic_vocab,
    )
    markov = evaluate(
        MarkovScorer.fit(synthetic_split.train, synthetic_vocab),
        synthetic_split.test,
        synthetic_vocab,
    )
    assert markov["ndcg@10"] >= 2 * popular["ndcg@10"]
    # Off-taste tracks are skipped more and are harder to predict.
    assert markov["played/ndcg@10"] > markov["skipped/ndcg@10"]
