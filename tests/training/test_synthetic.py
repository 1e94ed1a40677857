"""Synthetic generator: deterministic per seed, round-trips through the event log,
and learnable (sequence baselines beat popularity by a wide margin)."""

from __future__ import annotations

import time
from pathlib import Path

from skiprec.vocab import Vocabulary
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


def test_generate_sessions_is_fast() -> None:
    started = time.perf_counter()
    generate_sessions(num_sessions=5000, seed=1)
    assert time.perf_counter() - started < 2.0


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
