"""Event words, stored events, stream lines, event-log rows and timestamps."""

from __future__ import annotations

import pytest

from skiprec.events import (
    EVENT_LOG_COLUMNS,
    EVENT_LOG_HEADER,
    StoredEvent,
    event_log_row,
    event_type,
    is_skip,
    level_from_play_time,
    parse_code,
    parse_timestamp,
)


def test_event_words_map_to_skipped_and_back():
    assert is_skip("skip") and not is_skip("play")
    assert [event_type(is_skip(w)) for w in ("play", "skip")] == ["play", "skip"]
    with pytest.raises(ValueError, match="'like'"):
        is_skip("like")


def test_stored_event_round_trips_in_both_formats():
    event = StoredEvent("e-1:x@y", "user.1", "track_9", True, 1700000000.125)
    assert event.encode() == "e-1:x@y|track_9|s|1700000000.125"
    assert StoredEvent.decode("user.1", event.encode()) == event
    assert event.stream_line() == "e-1:x@y|user.1|track_9|s|1700000000.125"
    assert StoredEvent.from_stream_line(event.stream_line()) == event
    played = StoredEvent("", "u", "t", False, 5.0)
    assert played.encode() == "|t|p|5.000"


def test_stored_codes_carry_play_skip_or_the_level():
    assert [parse_code(c) for c in "ps0123"] == [
        (False, None),
        (True, None),
        (True, 0),
        (True, 1),
        (False, 2),
        (False, 3),
    ]
    graded = StoredEvent("e", "u", "t", False, 5.0, level=2)
    assert graded.encode() == "e|t|2|5.000"
    assert StoredEvent.decode("u", graded.encode()) == graded
    assert StoredEvent.from_stream_line(graded.stream_line()) == graded
    for bad in ("x", "4", ""):
        with pytest.raises(ValueError):
            StoredEvent.decode("u", f"id|t|{bad}|1.0")


def test_a_level_that_contradicts_play_or_skip_is_refused():
    with pytest.raises(ValueError, match="contradicts 'skip'"):
        StoredEvent("e", "u", "t", True, 1.0, level=3)
    with pytest.raises(ValueError, match="contradicts 'play'"):
        StoredEvent("e", "u", "t", False, 1.0, level=1)


@pytest.mark.parametrize(
    ("played_ms", "level"),
    [
        (0, 0),
        (9_999, 0),
        (10_000, 1),
        (49_999, 1),
        (50_000, 2),
        (94_999, 2),
        (95_000, 3),
        (200_000, 3),
    ],
)
def test_play_time_maps_to_documented_levels(played_ms, level):
    assert level_from_play_time(played_ms, 100_000) == level


def test_event_log_row_matches_the_columns_and_round_trips_time():
    row = event_log_row("u", "t", False, 1700000000.125)
    assert len(row) == len(EVENT_LOG_HEADER) == len(EVENT_LOG_COLUMNS) + 1
    assert row == ("u", "t", "play", "1700000000.125", "")
    assert event_log_row("u", "t", True, 60.0, 0)[2:] == ("skip", "60", "0")
    assert parse_timestamp(row[3]) == 1700000000.125


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1700000000, 1700000000.0),
        ("1700000000.5", 1700000000.5),
        ("2023-11-14T22:13:20", 1700000000.0),  # naive ISO = UTC
        ("2023-11-14T23:13:20+01:00", 1700000000.0),
    ],
)
def test_timestamps_parse_as_unix_seconds(value, seconds):
    assert parse_timestamp(value) == seconds


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (True, "unix seconds"),
        ("yesterday", "ISO-8601"),
        (-1, "between 0"),
        (1.7e12, "between 0"),  # milliseconds
        (float("nan"), "between 0"),
        ("2" * 65, "longer than 64"),
    ],
)
def test_bad_timestamps_say_what_is_wrong(value, problem):
    with pytest.raises(ValueError, match=problem):
        parse_timestamp(value)
