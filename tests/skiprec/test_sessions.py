"""The session cut, by hand-made logs."""

from __future__ import annotations

from skiprec.sessions import current_session_start, is_gap, session_starts


def test_a_gap_is_strictly_longer_than_gap_s():
    assert is_gap(0.0, 100.5, 100.0)
    assert not is_gap(0.0, 100.0, 100.0)
    assert not is_gap(100.0, 50.0, 100.0)  # a clock going back is no gap


def test_current_session_starts_after_the_last_gap():
    assert current_session_start([0, 10, 200, 250], 100, now=260) == 2
    assert current_session_start([0, 100], 100, now=100) == 0


def test_current_session_is_empty_once_the_listener_left():
    assert current_session_start([0, 10], 100, now=111) == 2
    assert current_session_start([], 100, now=0) == 0


def test_current_session_keeps_acceptance_order_when_clocks_go_back():
    assert current_session_start([100, 50, 90], 60, now=130) == 0


def test_session_starts_of_a_log():
    assert session_starts([], 10) == []
    assert session_starts([5], 10) == [0]
    assert session_starts([0, 5, 16, 20, 31, 41], 10) == [0, 2, 4]


def test_training_split_and_live_cut_agree_on_the_last_session():
    log = [0.0, 3.0, 50.0, 51.5, 120.0, 121.0, 122.0]
    for gap in (1.0, 2.0, 10.0, 100.0):
        assert session_starts(log, gap)[-1] == current_session_start(log, gap, 122.0)
