"""The exclusion policy on hand-made sessions."""

from __future__ import annotations

from skiprec.policy import ExclusionPolicy

SESSION = [("a", True), ("b", False), ("a", False), ("c", True)]


def test_default_excludes_skipped_tracks_only():
    assert ExclusionPolicy().excluded(SESSION) == {"a", "c"}


def test_excluding_played_too_removes_every_earlier_track():
    policy = ExclusionPolicy(exclude_played=True)
    assert policy.excluded(SESSION) == {"a", "b", "c"}


def test_no_rule_excludes_nothing():
    assert ExclusionPolicy(exclude_skipped=False).excluded(SESSION) == set()


def test_played_only_rule_keeps_skipped_tracks():
    policy = ExclusionPolicy(exclude_skipped=False, exclude_played=True)
    assert policy.excluded(SESSION) == {"a", "b"}  # a was also played
