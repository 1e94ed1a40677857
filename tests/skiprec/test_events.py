"""Event words, stored events, stream lines, event-log rows and timestamps."""

from __future__ import annotations

import pytest

from skiprec.events import (
    EVENT_LOG_COLUMNS,
    StoredEvent,
    event_log_row,
    event_type,
    is_skip,
    is_skip_letter,
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


def test_unknown_stored_letter_is_refused():
    assert is_skip_letter("s") and not is_skip_letter("p")
    with pytest.raises(ValueError, match="'x'"):
        StoredEvent.decode("u", "id|t|x|1.0")


def test_event_log_row_matches_the_columns_and_round_trips_time():
    row = event_log_row("u", "t", False, 1700000000.125)
    assert len(row) == len(EVENT_LOG_COLUMNS)
    assert row == ("u", "t", "play", "1700000000.125")
    assert event_log_row("u", "t", True, 60.0)[2:] == ("skip", "60")
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
