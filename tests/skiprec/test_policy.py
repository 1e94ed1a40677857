"""The session policy on hand-made sessions."""

from __future__ import annotations

import pytest

from skiprec.policy import SessionPolicy

SESSION = [("a", True), ("b", False), ("a", False), ("c", True)]


def test_default_is_no_rule():
    assert SessionPolicy().excluded(SESSION) == set()
    assert SessionPolicy().penalties(SESSION) == {}


def test_excluding_skipped_tracks():
    assert SessionPolicy(skipped="exclude").excluded(SESSION) == {"a", "c"}


def test_excluding_played_too_removes_every_earlier_track():
    policy = SessionPolicy(skipped="exclude", played="exclude")
    assert policy.excluded(SESSION) == {"a", "b", "c"}


def test_no_rule_excludes_and_penalises_nothing():
    policy = SessionPolicy(skipped_penalty=3.0)
    assert policy.excluded(SESSION) == set()
    assert policy.penalties(SESSION) == {}


def test_penalties_add_up_over_the_kinds_a_track_had():
    policy = SessionPolicy("penalize", "penalize", 1.5, 0.25)
    assert policy.excluded(SESSION) == set()
    assert policy.penalties(SESSION) == {"a": 1.75, "b": 0.25, "c": 1.5}


def test_an_excluding_rule_wins_over_a_penalty():
    policy = SessionPolicy(skipped="exclude", played="penalize", played_penalty=1.0)
    assert policy.excluded(SESSION) == {"a", "c"}
    assert policy.penalties(SESSION) == {"b": 1.0}


@pytest.mark.parametrize(
    "kwargs",
    [{"skipped": "drop"}, {"played_penalty": -1.0}, {"skipped_penalty": float("inf")}],
)
def test_bad_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        SessionPolicy(**kwargs)
