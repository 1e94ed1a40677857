"""Loaders: every format, gzip, format detection, and every kind of bad input."""

from __future__ import annotations

import gzip
import hashlib
import time
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from training.data import (
    DataError,
    Session,
    data_fingerprint,
    data_fingerprint_of,
    detect_format,
    expand_data_paths,
    load_sessions,
    write_event_log,
)
from training.synthetic import generate_sessions

MSSD_DERIVED = """user_id,song_id,previous_song,skipped
7,10,-1,0
7,11,10,1
7,10,11,2
7,12,10,3
7,13,12,4
8,11,-1,4
8,14,11,0
"""

LOG_HEADER = (
    "session_id,session_position,session_length,track_id_clean,"
    "skip_1,skip_2,skip_3,not_skipped,context_type\n"
)


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def assert_error(path: Path, fmt: str | None, line: int, column: str) -> DataError:
    with pytest.raises(DataError) as info:
        load_sessions(path, fmt)
    message = str(info.value)
    assert str(path) in message
    assert f"line {line}" in message
    assert repr(column) in message
    assert (info.value.line, info.value.column) == (line, column)
    return info.value


# --- mssd-derived ---------------------------------------------------------------


def test_mssd_derived_sessions_and_skip_2_labels(tmp_path: Path) -> None:
    path = write(tmp_path, MSSD_DERIVED)
    assert detect_format(path) == "mssd-derived"
    sessions = load_sessions(path)
    # File values 0, 1, 2 -> levels 0, 1, 2; 3 and 4 -> level 3; skip = level <= 1.
    assert sessions == [
        Session(
            "7",
            ("10", "11", "10", "12", "13"),
            (True, True, False, False, False),
            levels=(0, 1, 2, 3, 3),
        ),
        Session("8", ("11", "14"), (False, True), levels=(3, 0)),
    ]


def test_session_refuses_levels_that_contradict_skipped() -> None:
    with pytest.raises(ValueError, match="skip level 2 contradicts skipped=True"):
        Session("s", ("a",), (True,), levels=(2,))
    with pytest.raises(ValueError, match="2 skip levels for 1 events"):
        Session("s", ("a",), (True,), levels=(0, 1))
    assert Session("s", ("a", "b"), (True, False), levels=(None, 3)).levels == (
        None,
        3,
    )


def test_mssd_derived_gzip_is_transparent(tmp_path: Path) -> None:
    plain = load_sessions(write(tmp_path, MSSD_DERIVED))
    assert load_sessions(write(tmp_path, MSSD_DERIVED, "data.csv.gz")) == plain


@pytest.mark.parametrize("level", ["5", "-1", "x", "1.0", ""])
def test_mssd_derived_unknown_skip_encoding(tmp_path: Path, level: str) -> None:
    path = write(tmp_path, MSSD_DERIVED.replace("7,11,10,1", f"7,11,10,{level}"))
    error = assert_error(path, None, 3, "skipped")
    assert "unknown skip encoding" in str(error)


def test_mssd_derived_non_contiguous_session(tmp_path: Path) -> None:
    path = write(tmp_path, MSSD_DERIVED + "7,15,-1,4\n")
    assert_error(path, None, 9, "user_id")


def test_mssd_derived_previous_song_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path, MSSD_DERIVED.replace("7,12,10,3", "7,12,99,3"))
    assert_error(path, None, 5, "previous_song")


@pytest.mark.data
def test_mssd_dev_file_loads_fast(shared_data: Path) -> None:
    path = shared_data / "mssd_sessions_derived" / "mssd_sessions_dev.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    started = time.perf_counter()
    sessions = load_sessions(path)
    elapsed = time.perf_counter() - started
    events = sum(map(len, sessions))
    assert (len(sessions), events) == (8040, 155_651)
    assert len({t for s in sessions for t in s.track_ids}) == 5027
    assert sum(sum(s.skipped) for s in sessions) / events == pytest.approx(
        0.5364, abs=1e-3
    )
    assert elapsed < 2.0


# --- mssd-log ---------------------------------------------------------------------


def test_mssd_log_orders_by_position_and_reads_booleans(tmp_path: Path) -> None:
    rows = [
        "s1,2,3,t_b,false,false,true,false,radio",
        "s2,1,1,t_c,1,1,1,0,radio",
        "s1,1,3,t_a,True,True,True,False,radio",
        "s1,3,3,t_c,0,0,0,1,radio",
    ]
    path = write(tmp_path, LOG_HEADER + "\n".join(rows) + "\n")
    assert detect_format(path) == "mssd-log"
    assert load_sessions(path) == [
        Session("s1", ("t_a", "t_b", "t_c"), (True, False, False)),
        Session("s2", ("t_c",), (True,)),
    ]


def test_mssd_log_unknown_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, LOG_HEADER + "s1,1,1,t_a,False,maybe,False,True,radio\n")
    assert "unknown skip encoding" in str(assert_error(path, None, 2, "skip_2"))


def test_mssd_log_repeated_position(tmp_path: Path) -> None:
    rows = "s1,1,2,t_a,False,False,False,True,r\ns1,1,2,t_b,False,False,False,True,r\n"
    assert_error(write(tmp_path, LOG_HEADER + rows), None, 3, "session_position")


@pytest.mark.data
def test_mssd_log_official_sample(shared_data: Path) -> None:
    path = shared_data / "mssd_log_sample" / "log_sample_very_small.csv"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    sessions = load_sessions(path)
    events = sum(map(len, sessions))
    assert (len(sessions), events) == (11, 201)
    assert sorted(map(len, sessions)) == [11, 15, 15] + [20] * 8
    assert sum(sum(s.skipped) for s in sessions) / events == pytest.approx(
        0.408, abs=1e-3
    )
    assert sessions[0].session_id == "0_00006f66-33e5-4de7-a324-2d18e439fc1e"
    assert sessions[0].track_ids[0] == "t_0479f24c-27d2-46d6-a00c-7ec928f2b539"


# --- events -----------------------------------------------------------------------


def test_events_split_on_inactivity_gap(tmp_path: Path) -> None:
    text = (
        "user_id,track_id,event,timestamp\n"
        "u1,a,play,1000\n"
        "u2,x,skip,2023-11-14T22:13:20Z\n"
        "u1,c,play,4000\n"  # 3000 s after b: a new session
        "u1,b,skip,1200.5\n"  # earlier than the row above: sorted by time
        "u2,y,play,2023-11-14T22:14:20\n"  # naive ISO = UTC
    )
    path = write(tmp_path, text)
    assert detect_format(path) == "events"
    assert load_sessions(path) == [
        Session("u1#0", ("a", "b"), (False, True), (1000.0, 1200.5)),
        Session("u1#1", ("c",), (False,), (4000.0,)),
        Session("u2#0", ("x", "y"), (True, False), (1700000000.0, 1700000060.0)),
    ]
    one_session = load_sessions(path, session_gap_s=10_000)
    assert [s.session_id for s in one_session] == ["u1#0", "u2#0"]


def test_events_equal_timestamps_keep_file_order(tmp_path: Path) -> None:
    text = "user_id,track_id,event,timestamp\nu,b,play,5\nu,a,play,5\nu,c,play,5\n"
    assert load_sessions(write(tmp_path, text))[0].track_ids == ("b", "a", "c")


def test_events_unknown_event_type(tmp_path: Path) -> None:
    text = "user_id,track_id,event,timestamp\nu,a,play,1\nu,b,like,2\n"
    assert "unknown event type" in str(
        assert_error(write(tmp_path, text), None, 3, "event")
    )


@pytest.mark.parametrize("stamp", ["yesterday", "", "nan", "2023-13-01T00:00:00"])
def test_events_bad_timestamp(tmp_path: Path, stamp: str) -> None:
    text = f"user_id,track_id,event,timestamp\nu,a,play,{stamp}\n"
    assert "bad timestamp" in str(
        assert_error(write(tmp_path, text), None, 2, "timestamp")
    )


def test_events_optional_skip_level_column(tmp_path: Path) -> None:
    text = (
        "user_id,track_id,event,timestamp,skip_level\n"
        "u1,a,skip,1,0\n"
        "u1,b,play,2,\n"  # no grade for this event
        "u1,c,play,3,2\n"
        "u2,d,skip,1,\n"  # a session without any grade has levels None
    )
    assert load_sessions(write(tmp_path, text)) == [
        Session(
            "u1#0", ("a", "b", "c"), (True, False, False), (1.0, 2.0, 3.0), (0, None, 2)
        ),
        Session("u2#0", ("d",), (True,), (1.0,)),
    ]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("u,a,play,1,1", "skip level 1 contradicts event 'play'"),
        ("u,a,skip,1,3", "skip level 3 contradicts event 'skip'"),
        ("u,a,play,1,4", "unknown skip level '4'"),
        ("u,a,play,1,x", "unknown skip level 'x'"),
    ],
)
def test_events_bad_skip_level(tmp_path: Path, row: str, problem: str) -> None:
    text = f"user_id,track_id,event,timestamp,skip_level\n{row}\n"
    assert problem in str(assert_error(write(tmp_path, text), None, 2, "skip_level"))


def test_write_event_log_round_trips_grades(tmp_path: Path) -> None:
    sessions = [
        Session("u1#0", ("a", "b"), (False, True), (10.0, 20.0), (3, None)),
        Session("u2#0", ("c",), (True,), (15.0,)),
    ]
    path = tmp_path / "log.csv"
    write_event_log(sessions, path)
    assert load_sessions(path) == sessions


def test_write_event_log_round_trips(tmp_path: Path) -> None:
    sessions = [
        Session("u1#0", ("a", "b"), (False, True), (10.0, 20.25)),
        Session("u1#1", ("c",), (True,), (99_999.0,)),
        Session("u2#0", ("a",), (False,), (15.0,)),
    ]
    path = tmp_path / "log.csv.gz"
    assert write_event_log(sessions, path) == 4
    assert load_sessions(path) == sessions


def test_write_event_log_synthesises_separated_timestamps(tmp_path: Path) -> None:
    sessions = [
        Session("s1", ("a", "b"), (False, True)),
        Session("s2", ("c",), (False,)),
    ]
    path = tmp_path / "log.csv"
    write_event_log(sessions, path, user_ids=["same", "same"])
    loaded = load_sessions(path)
    assert [(s.session_id, s.track_ids, s.skipped) for s in loaded] == [
        ("same#0", ("a", "b"), (False, True)),
        ("same#1", ("c",), (False,)),
    ]


# --- ml-1m --------------------------------------------------------------------------


def test_ml1m_sessions_are_all_plays(tmp_path: Path) -> None:
    path = write(tmp_path, "1 5\n1 3\n2 5\n1 9\n", "ml.txt.gz")
    assert detect_format(path) == "ml-1m"
    assert load_sessions(path) == [
        Session("1", ("5", "3", "9"), (False, False, False)),
        Session("2", ("5",), (False,)),
    ]


def test_ml1m_malformed_row(tmp_path: Path) -> None:
    assert_error(write(tmp_path, "1 5\n1\n"), "ml-1m", 2, "item")
    assert_error(write(tmp_path, "1 5\n1 x\n"), "ml-1m", 2, "item")


@pytest.mark.data
def test_ml1m_file(shared_data: Path) -> None:
    path = shared_data / "movielens_1m" / "ml-1m.txt.gz"
    if not path.is_file():
        pytest.skip(f"{path} absent")
    sessions = load_sessions(path)
    assert (len(sessions), sum(map(len, sessions))) == (6040, 999_611)


# --- errors common to all formats ---


@pytest.mark.parametrize("fmt", [None, "mssd-derived", "mssd-log", "events"])
def test_empty_file(tmp_path: Path, fmt: str | None) -> None:
    assert "empty file" in str(assert_error(write(tmp_path, ""), fmt, 1, "(header)"))


def test_header_without_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,track_id,event,timestamp\n")
    assert "no data rows" in str(assert_error(path, None, 2, "(row)"))


@pytest.mark.parametrize(
    ("fmt", "header", "missing"),
    [
        ("mssd-derived", "user_id,song_id,skipped", "previous_song"),
        ("mssd-log", "session_id,session_position,track_id_clean,skip_1", "skip_2"),
        ("events", "user_id,track_id,timestamp", "event"),
    ],
)
def test_missing_column(tmp_path: Path, fmt: str, header: str, missing: str) -> None:
    path = write(
        tmp_path, header + "\n" + ",".join("1" * len(header.split(","))) + "\n"
    )
    assert "missing column" in str(assert_error(path, fmt, 1, missing))


def test_malformed_row_names_first_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path, "user_id,track_id,event,timestamp\nu,a,play,1\nu,b\n")
    assert "malformed row" in str(assert_error(path, None, 3, "event"))


def test_unrecognised_header(tmp_path: Path) -> None:
    assert_error(write(tmp_path, "foo,bar\n1,2\n"), None, 1, "(header)")


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(gzip.compress(MSSD_DERIVED.encode())[:40])
    with pytest.raises(DataError, match="broken.csv.gz"):
        load_sessions(path, "mssd-derived")


def test_unknown_format_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown format"):
        load_sessions(write(tmp_path, MSSD_DERIVED), "parquet")


def test_data_fingerprint_is_sha256_of_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, MSSD_DERIVED, "data.csv.gz")
    assert data_fingerprint(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# --- Parquet and many files -------------------------------------------------------


@pytest.mark.parametrize(
    "text", [MSSD_DERIVED, LOG_HEADER + "s1,2,2,t9,0,1,0,0,x\ns1,1,2,t8,0,0,0,1,x\n"]
)
def test_parquet_loads_as_the_csv_it_holds(tmp_path: Path, text: str) -> None:
    csv_path = write(tmp_path, text)
    parquet = tmp_path / "data.parquet"
    # pyarrow types the columns as a warehouse would: integers, booleans, strings.
    pq.write_table(pa_csv.read_csv(csv_path), parquet)
    assert detect_format(parquet) == detect_format(csv_path)
    assert load_sessions(parquet) == load_sessions(csv_path)


def test_parquet_event_log_round_trips_as_the_csv_one(tmp_path: Path) -> None:
    sessions = generate_sessions(num_sessions=40, num_tracks=50, seed=4)
    graded = [
        Session(
            s.session_id,
            s.track_ids,
            s.skipped,
            levels=tuple(
                (0 if skip else 3) if i % 3 else None
                for i, skip in enumerate(s.skipped)
            ),
        )
        for s in sessions
    ]
    write_event_log(graded, tmp_path / "log.csv")
    write_event_log(graded, tmp_path / "log.parquet")
    # and the CSV converted by pyarrow, timestamps typed int64, empty levels null
    pq.write_table(pa_csv.read_csv(tmp_path / "log.csv"), tmp_path / "typed.parquet")
    expected = load_sessions(tmp_path / "log.csv")
    assert load_sessions(tmp_path / "log.parquet") == expected
    assert load_sessions(tmp_path / "typed.parquet") == expected


def test_parquet_bad_value_names_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    table = pa_csv.read_csv(
        write(tmp_path, MSSD_DERIVED.replace("7,12,10,3", "7,12,10,9"))
    )
    pq.write_table(table, path)
    assert_error(path, None, 5, "skipped")


def test_expand_data_paths_reads_files_folders_and_globs(tmp_path: Path) -> None:
    for name in ("b.csv", "a.csv", "c.parquet"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.csv").write_text("x")
    assert expand_data_paths([tmp_path / "b.csv"]) == [tmp_path / "b.csv"]
    assert expand_data_paths([str(tmp_path / "*.csv")]) == [
        tmp_path / "a.csv",
        tmp_path / "b.csv",
    ]
    assert expand_data_paths([tmp_path / "sub", str(tmp_path / "**/*.parquet")]) == [
        tmp_path / "sub" / "d.csv",
        tmp_path / "c.parquet",
    ]
    assert expand_data_paths([tmp_path / "a.csv", str(tmp_path / "*.csv")]) == [
        tmp_path / "a.csv",
        tmp_path / "b.csv",
    ]
    with pytest.raises(DataError, match="no such data file"):
        expand_data_paths([str(tmp_path / "*.json")])


def test_data_fingerprint_of_many_files_depends_on_each(tmp_path: Path) -> None:
    a, b = write(tmp_path, "1", "a.csv"), write(tmp_path, "2", "b.csv")
    assert data_fingerprint_of([a]) == data_fingerprint(a)
    both = data_fingerprint_of([a, b])
    b.write_text("3")
    assert data_fingerprint_of([a, b]) != both
