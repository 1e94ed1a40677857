"""Splits, the training vocabulary and popularity, on hand-made sessions."""

from __future__ import annotations

import pytest

from skiprec.vocab import NUM_SPECIAL
from training.data import Session
from training.splits import (
    EvalExample,
    build_vocab,
    held_out_part,
    leave_one_out_split,
    popularity,
    session_disjoint_split,
    session_examples,
)


def make_sessions(count: int) -> list[Session]:
    return [
        Session(
            f"s{i}",
            tuple(f"s{i}_{j}" for j in range(3 + i % 4)),
            (False,) * (3 + i % 4),
        )
        for i in range(count)
    ]


def test_session_disjoint_split_holds_out_whole_sessions() -> None:
    sessions = make_sessions(50)
    split = session_disjoint_split(
        sessions, val_fraction=0.2, test_fraction=0.1, seed=3
    )
    assert len(split.train) == 35
    held_val = {e.history[0][0].split("_")[0] for e in split.validation}
    held_test = {e.history[0][0].split("_")[0] for e in split.test}
    train_ids = {s.session_id for s in split.train}
    assert (len(held_val), len(held_test)) == (10, 5)
    assert not (held_val & held_test) and not (train_ids & (held_val | held_test))
    assert train_ids | held_val | held_test == {s.session_id for s in sessions}
    by_id = {s.session_id: s for s in sessions}
    assert len(split.test) == sum(len(by_id[s]) - 1 for s in held_test)
    assert [s.session_id for s in split.train] == sorted(
        train_ids, key=lambda s: int(s[1:])
    )  # input order kept


def test_session_disjoint_split_examples_cover_every_position() -> None:
    session = Session("only", ("a", "b", "c"), (False, True, False))
    split = session_disjoint_split([session] * 10, val_fraction=0.0, test_fraction=0.1)
    assert split.test == [
        EvalExample((("a", False),), "b", True),
        EvalExample((("a", False), ("b", True)), "c", False),
    ]
    assert split.validation == []


def test_session_disjoint_split_is_seeded() -> None:
    sessions = make_sessions(40)
    first = session_disjoint_split(sessions, seed=1)
    assert session_disjoint_split(sessions, seed=1) == first
    assert session_disjoint_split(sessions, seed=2).test != first.test


def test_session_disjoint_split_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError):
        session_disjoint_split(make_sessions(5), val_fraction=0.5, test_fraction=0.5)


def test_leave_one_out_split() -> None:
    long = Session("u1", ("a", "b", "c", "d"), (False, True, False, True), (1, 2, 3, 4))
    short = Session("u2", ("e", "f"), (False, False))
    split = leave_one_out_split([long, short])
    assert split.train == [
        Session("u1", ("a", "b"), (False, True), (1, 2)),
        short,
    ]
    assert split.validation == [EvalExample((("a", False), ("b", True)), "c", False)]
    assert split.test == [
        EvalExample((("a", False), ("b", True), ("c", False)), "d", True)
    ]


def test_build_vocab_uses_train_sessions_only() -> None:
    sessions = make_sessions(20)
    split = session_disjoint_split(sessions, seed=0)
    vocab = build_vocab(split.train)
    train_tracks = {t for s in split.train for t in s.track_ids}
    assert set(vocab.track_ids) == train_tracks
    assert all(e.target not in vocab for e in split.test)  # disjoint tracks here
    assert vocab.size == len(train_tracks) + NUM_SPECIAL


def test_build_vocab_orders_by_frequency() -> None:
    sessions = [Session("a", ("x", "y", "y", "z"), (False,) * 4)]
    assert build_vocab(sessions).track_ids == ("y", "x", "z")


def test_popularity_counts_plays_and_lists_every_track() -> None:
    sessions = [
        Session("a", ("x", "y", "y"), (False, True, False)),
        Session("b", ("z", "y", "x"), (True, False, False)),
    ]
    assert list(popularity(sessions).items()) == [("x", 2), ("y", 2), ("z", 0)]


def test_examples_carry_the_sessions_skip_levels() -> None:
    graded = Session("g", ("a", "b", "c"), (True, False, False), levels=(0, 3, 2))
    assert session_examples(graded) == [
        EvalExample((("a", True),), "b", False, (0,), 3),
        EvalExample((("a", True), ("b", False)), "c", False, (0, 3), 2),
    ]
    split = leave_one_out_split([graded])
    assert split.train[0].levels == (0,)
    assert (split.validation[0].history_levels, split.validation[0].target_level) == (
        (0,),
        3,
    )
    assert (split.test[0].history_levels, split.test[0].target_level) == ((0, 3), 2)
    plain = session_examples(Session("p", ("a", "b"), (False, False)))
    assert (plain[0].history_levels, plain[0].target_level) == (None, None)


def test_held_out_part_is_a_stable_share_of_session_ids():
    ids = [f"u{i}#{i % 3}" for i in range(20_000)]
    parts = [held_out_part(i) for i in ids]
    assert parts == [held_out_part(i) for i in ids]  # the same on every reader
    assert parts.count("test") / len(ids) == pytest.approx(0.1, abs=0.01)
    assert parts.count("validation") / len(ids) == pytest.approx(0.1, abs=0.01)
    assert {held_out_part(i, 0.0, 0.0) for i in ids[:100]} == {"train"}
