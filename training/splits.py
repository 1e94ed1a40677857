"""Train / validation / test splits of sessions, the training vocabulary and popularity.

Two protocols:
- ``session_disjoint_split``: whole sessions are held out (the realistic one for a
  session recommender: the service sees sessions it never trained on). Every position
  ``t >= 1`` of a held-out session is one example: history = events[:t], target =
  events[t].
- ``leave_one_out_split``: the SASRec/BERT4Rec protocol (ML-1M): per session the last
  event is the test target, the second-to-last the validation target.

- ``held_out_part``: the session-disjoint split of a log too large to hold, decided
  per session from a hash of its id (so every reader of a stream, on any rank,
  puts a session in the same part without seeing the others). Its held-out
  sessions are not the ones ``session_disjoint_split`` picks on the same data.

The vocabulary and popularity come from the training sessions only, so held-out
tracks never seen in training are OOV (a miss), as they would be in production.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from skiprec.vocab import Vocabulary
from training.data import Session

SPLIT_SEED = 0  # the held-out sessions do not move with the training seed
PROTOCOLS = ("session", "loo")
Part = Literal["train", "validation", "test"]


@dataclass(frozen=True)
class EvalExample:
    """Predict ``target`` after ``history``: (track_id, skipped) pairs, oldest first.

    ``history_levels`` holds the history's skip levels (``Session.levels``) when the
    data has grades, ``target_level`` the target's.
    """

    history: tuple[tuple[str, bool], ...]
    target: str
    target_skipped: bool
    history_levels: tuple[int | None, ...] | None = None
    target_level: int | None = None


@dataclass
class Split:
    train: list[Session]
    validation: list[EvalExample] = field(default_factory=list)
    test: list[EvalExample] = field(default_factory=list)


def _events(session: Session) -> tuple[tuple[str, bool], ...]:
    return tuple(zip(session.track_ids, session.skipped, strict=True))


def session_examples(session: Session) -> list[EvalExample]:
    """One example per position ``t >= 1`` of a session."""
    events = _events(session)
    levels = session.levels
    return [
        EvalExample(
            events[:t],
            events[t][0],
            events[t][1],
            levels[:t] if levels is not None else None,
            levels[t] if levels is not None else None,
        )
        for t in range(1, len(events))
    ]


def session_disjoint_split(
    sessions: Sequence[Session],
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Hold out whole sessions (seeded shuffle); train keeps the input order."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError("need val_fraction, test_fraction >= 0 with a sum below 1")
    order = np.random.default_rng(seed).permutation(len(sessions))
    num_test = round(len(sessions) * test_fraction)
    num_val = round(len(sessions) * val_fraction)
    test_ids = order[:num_test].tolist()
    val_ids = order[num_test : num_test + num_val].tolist()
    held_out = set(test_ids) | set(val_ids)
    return Split(
        train=[s for i, s in enumerate(sessions) if i not in held_out],
        validation=[e for i in val_ids for e in session_examples(sessions[i])],
        test=[e for i in test_ids for e in session_examples(sessions[i])],
    )


def held_out_part(
    session_id: str, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> Part:
    """The part of a streamed session: ``test`` for the first ``test_fraction`` of
    the hash range of its id, ``validation`` for the next ``val_fraction``."""
    digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
    position = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "validation"
    return "train"


def leave_one_out_split(sessions: Sequence[Session]) -> Split:
    """Last event = test target, second-to-last = validation target; rest = train.

    Sessions shorter than 3 events go to train whole.
    """
    split = Split(train=[])
    for session in sessions:
        if len(session) < 3:
            split.train.append(session)
            continue
        events = _events(session)
        times = session.timestamps
        levels = session.levels
        split.train.append(
            Session(
                session.session_id,
                session.track_ids[:-2],
                session.skipped[:-2],
                times[:-2] if times is not None else None,
                levels[:-2] if levels is not None else None,
            )
        )
        for examples, end in ((split.validation, -2), (split.test, -1)):
            examples.append(
                EvalExample(
                    events[:end],
                    *events[end],
                    levels[:end] if levels is not None else None,
                    levels[end] if levels is not None else None,
                )
            )
    return split


def build_vocab(train_sessions: Sequence[Session]) -> Vocabulary:
    """Every track of the training sessions, most frequent first."""
    return Vocabulary.build(t for s in train_sessions for t in s.track_ids)


def popularity(train_sessions: Sequence[Session]) -> dict[str, int]:
    """Plays (non-skipped events) per training track, most played first.

    This is ``popularity.json``, the service's cold-start list: a track that listeners
    mostly skip should not top it. Every training track is listed (0 if only skipped).
    """
    counts: Counter[str] = Counter()
    for session in train_sessions:
        for track_id, skipped in zip(session.track_ids, session.skipped, strict=True):
            counts[track_id] += not skipped
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def make_split(sessions: Sequence[Session], protocol: str) -> Split:
    """``session`` = session-disjoint (seed ``SPLIT_SEED``), ``loo`` = leave-one-out.

    The split every command rebuilds from a data file, so ``skiprec evaluate`` scores
    the test sessions of the split ``skiprec train`` held out.
    """
    if protocol == "session":
        return session_disjoint_split(sessions, seed=SPLIT_SEED)
    if protocol == "loo":
        return leave_one_out_split(sessions)
    raise ValueError(f"unknown split {protocol!r}; expected one of {PROTOCOLS}")
