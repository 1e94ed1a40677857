"""Shared training fixtures: a small synthetic dataset, its split and vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

from skiprec.vocab import Vocabulary
from training.data import Session, shared_data_dir
from training.splits import Split, build_vocab, session_disjoint_split
from training.synthetic import generate_sessions


@pytest.fixture(scope="session")
def synthetic_sessions() -> list[Session]:
    """600 synthetic sessions over 300 tracks in 12 taste clusters (seed 0)."""
    return generate_sessions(num_sessions=600, num_tracks=300, num_clusters=12, seed=0)


@pytest.fixture(scope="session")
def synthetic_split(synthetic_sessions: list[Session]) -> Split:
    return session_disjoint_split(synthetic_sessions, seed=0)


@pytest.fixture(scope="session")
def synthetic_vocab(synthetic_split: Split) -> Vocabulary:
    return build_vocab(synthetic_split.train)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The research data folder; skips the test when it is absent."""
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"shared data not found at {root} (set SKIPREC_SHARED_DATA)")
    return root
