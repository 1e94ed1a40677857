"""Session data: loaders for every supported log format, and the event-log writer.

Every loader produces ``Session`` objects (one listening session, oldest event first,
``skipped[i]`` True when event ``i`` was skipped in the MSSD ``skip_2`` sense, and
``levels[i]`` its graded skip level ``skiprec.events.SKIP_LEVELS`` when the source
has one). Formats:

    mssd-derived  user_id,song_id,previous_song,skipped     (one session per user_id;
                  ``skipped`` is a graded value 0..4, skip = ``skipped <= 1``; see
                  shared/data/mssd_sessions_derived/SOURCE.md). The grade is kept:
                  file values 0, 1, 2 -> levels 0, 1, 2; 3 and 4 -> level 3 (heard
                  to the end; the file's 3/4 distinction is not MSSD's scale)
    mssd-log      official MSSD session log (session_id, session_position,
                  track_id_clean, skip_2, ...); skip = skip_2; no grades
    events        user_id,track_id,event,timestamp[,skip_level] — the event log the
                  live service exports (``skiprec.events``); split into sessions by
                  the inactivity gap of ``skiprec.sessions``. ``skip_level`` is
                  optional (the column, and per row: empty = no grade); a level
                  that contradicts ``event`` is an error
    ml-1m         ``user item`` per line, no header (SASRec's ml-1m.txt); all plays

Files may be gzip-compressed (detected from the magic bytes), or Parquet files
(``PAR1`` magic; read through pyarrow, the ``train`` extra) with the columns of a
CSV format, one row per event: a cell reads as its CSV text would (a number, a
boolean, an ISO time, null = empty), so a Parquet file loads into the same sessions
as the CSV it holds. ``DataError`` lines of a Parquet file are row numbers + 1, as
if its header were line 1. ``expand_data_paths`` turns ``--data`` arguments (files,
folders, globs) into the files to read. Anything unexpected
raises ``DataError`` naming the file, the 1-based line and the column: a loader never
guesses, because a silently mis-parsed skip column would poison every later number.

Long because each format's reader checks every column of every row with its own
error; they share the file opening, the row reader and ``Session``, and one module
keeps the four readers and the writer of the event log comparable side by side.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from skiprec.events import (
    EVENT_LOG_COLUMNS,
    EVENT_LOG_HEADER,
    EVENT_LOG_LEVEL_COLUMN,
    SKIP_LEVELS,
    SKIP_MAX_LEVEL,
    event_log_row,
    event_type,
    format_timestamp,
    is_skip,
    level_is_skip,
    parse_timestamp,
)
from skiprec.sessions import DEFAULT_SESSION_GAP_S, session_starts, time_order

FORMATS = ("mssd-derived", "mssd-log", "events", "ml-1m")
MSSD_DERIVED_COLUMNS = ("user_id", "song_id", "previous_song", "skipped")
MSSD_LOG_COLUMNS = ("session_id", "session_position", "track_id_clean", "skip_2")
# mssd-derived ``skipped`` value -> skip level: 0, 1, 2 are MSSD's skip_1, skip_2,
# skip_3; 3 and 4 both mean the track was not skipped (heard to the end).
MSSD_DERIVED_LEVELS = {"0": 0, "1": 1, "2": 2, "3": 3, "4": 3}

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
# Parquet rows converted to text at once: bounds the memory of one conversion.
_PARQUET_BATCH_ROWS = 65_536
_BOOLEANS = {
    "True": True,
    "true": True,
    "1": True,
    "False": False,
    "false": False,
    "0": False,
}
_INTEGER = re.compile(r"^-?\d+$")


@dataclass(frozen=True)
class Session:
    """One listening session, oldest event first."""

    session_id: str
    track_ids: tuple[str, ...]
    skipped: tuple[bool, ...]  # True = skipped (MSSD skip_2), False = played
    timestamps: tuple[float, ...] | None = (
        None  # unix seconds, when the source has them
    )
    # Per event its skip level (SKIP_LEVELS; None = that event has no grade), or
    # None when the source has no grades at all. ``skipped[i]`` is always
    # ``level_is_skip(levels[i])`` where a level is given.
    levels: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.levels is None:
            return
        if len(self.levels) != len(self.track_ids):
            raise ValueError(
                f"session {self.session_id!r}: {len(self.levels)} skip levels for "
                f"{len(self.track_ids)} events"
            )
        for level, skipped in zip(self.levels, self.skipped, strict=True):
            if level is not None and level_is_skip(level) != skipped:
                raise ValueError(
                    f"session {self.session_id!r}: skip level {level} contradicts "
                    f"skipped={skipped}"
                )

    def __len__(self) -> int:
        return len(self.track_ids)


class DataError(ValueError):
    """A data file cannot be read as the requested format; says where and why."""

    def __init__(self, path: Path, line: int, column: str, problem: str) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.problem = problem
        super().__init__(f"{path}: line {line}, column {column!r}: {problem}")


def shared_data_dir() -> Path:
    """The research data: ``$SKIPREC_SHARED_DATA``, else ``<repo>/../shared/data``."""
    env = os.environ.get("SKIPREC_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def data_fingerprint(path: Path) -> str:
    """sha256 of the file's bytes (as stored, i.e. of the .gz when compressed)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint_of(paths: Sequence[Path]) -> str:
    """:func:`data_fingerprint` of one file; of several, sha256 of their names and
    fingerprints in the given order."""
    if len(paths) == 1:
        return data_fingerprint(paths[0])
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{Path(path).name}:{data_fingerprint(path)}\n".encode())
    return digest.hexdigest()


def expand_data_paths(patterns: Sequence[str | Path]) -> list[Path]:
    """The data files named by ``patterns``: a file, a folder (its files, sorted) or
    a glob (``logs/*.parquet``, ``**`` included; sorted), in the order given; a
    file named twice is read once.

    Raises:
        DataError: a pattern that names no file.
    """
    paths: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():
            paths.append(path)
            continue
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file())
        else:
            root = Path(path.anchor or ".")
            relative = str(path.relative_to(root)) if path.anchor else str(path)
            matches = sorted(p for p in root.glob(relative) if p.is_file())
        if not matches:
            raise DataError(path, 0, "(file)", "no such data file, folder or glob")
        paths.extend(matches)
    return list(dict.fromkeys(paths))


def _magic(path: Path) -> bytes:
    try:
        with path.open("rb") as raw:
            return raw.read(4)
    except OSError as exc:
        raise DataError(path, 0, "(file)", f"cannot open: {exc}") from exc


def is_parquet(path: Path) -> bool:
    return _magic(Path(path)) == _PARQUET_MAGIC


@contextmanager
def _open_text(path: Path) -> Iterator[TextIO]:
    path = Path(path)
    magic = _magic(path)[:2]
    binary = gzip.open(path, "rb") if magic == _GZIP_MAGIC else path.open("rb")
    with binary, io.TextIOWrapper(binary, encoding="utf-8", newline="") as text:
        try:
            yield text
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            # gzip corruption / truncation and bad bytes surface while iterating.
            raise DataError(path, 0, "(file)", f"unreadable: {exc}") from exc


def detect_format(path: Path) -> str:
    """The format of ``path`` from its header columns (or two integers for ml-1m)."""
    if is_parquet(path):
        columns = set(_parquet_file(path).schema_arrow.names)
        first = ",".join(sorted(columns))
    else:
        with _open_text(path) as text:
            first = text.readline()
        if not first.strip():
            raise DataError(path, 1, "(header)", "empty file")
        columns = {c.strip() for c in next(csv.reader([first]))}
    if set(MSSD_LOG_COLUMNS) <= columns:
        return "mssd-log"
    if set(MSSD_DERIVED_COLUMNS) <= columns:
        return "mssd-derived"
    if set(EVENT_LOG_COLUMNS) <= columns:
        return "events"
    fields = first.split()
    if len(fields) == 2 and all(_INTEGER.match(f) for f in fields):
        return "ml-1m"
    raise DataError(
        path,
        1,
        "(header)",
        f"unrecognised header {first.strip()[:120]!r}; expected one of the formats "
        f"{', '.join(FORMATS)} (see training/data.py)",
    )


def load_many(paths: Sequence[Path], format: str | None = None) -> list[Session]:
    """The sessions of every file, in order (each file's format detected unless
    given); sessions never span files."""
    return [session for path in paths for session in load_sessions(path, format)]


def load_sessions(
    path: Path,
    format: str | None = None,
    *,
    session_gap_s: float = DEFAULT_SESSION_GAP_S,
) -> list[Session]:
    """Load sessions from a file; format detected from its columns unless given.

    Args:
        path: the data file, optionally gzip-compressed.
        format: one of ``FORMATS``; None detects it from the header.
        session_gap_s: ``events`` only: inactivity (seconds) that starts a new session.

    Raises:
        DataError: the file is empty, lacks a column, or has a malformed value.
    """
    path = Path(path)
    fmt = format if format is not None else detect_format(path)
    loaders: dict[str, Callable[[Path], list[Session]]] = {
        "mssd-derived": _load_mssd_derived,
        "mssd-log": _load_mssd_log,
        "events": lambda p: _load_events(p, session_gap_s),
        "ml-1m": _load_ml1m,
    }
    if fmt not in loaders:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return loaders[fmt](path)


Row = tuple[int, list[str], dict[str, int]]  # (line, fields, column -> index)


@contextmanager
def _records(path: Path, required: Sequence[str]) -> Iterator[Iterator[Row]]:
    """The data rows of a CSV (gzip or not) or Parquet file, with ``required``
    columns checked: what every column-based loader reads."""
    if is_parquet(path):
        yield _parquet_rows(path, required)
        return
    with _open_text(path) as text:
        yield _rows(path, text, required)


def _parquet_file(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # the `train` extra brings it
        raise DataError(
            path, 0, "(file)", "reading Parquet needs pyarrow (pip install pyarrow)"
        ) from exc
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowException subclasses these
        raise DataError(path, 0, "(file)", f"unreadable Parquet: {exc}") from exc


def _cell_text(value: object) -> str:
    """A Parquet cell as the CSV text of the same value."""
    if value is None:
        return ""
    if isinstance(value, float):
        return format_timestamp(value) if value.is_integer() else repr(value)
    if hasattr(value, "isoformat"):  # a Parquet timestamp column
        return str(value.isoformat())
    return str(value)


def _parquet_rows(path: Path, required: Sequence[str]) -> Iterator[Row]:
    """Parquet's rows as :func:`_rows` yields a CSV's, one record batch at a time."""
    table = _parquet_file(path)
    names = list(table.schema_arrow.names)
    columns = {name: i for i, name in enumerate(names)}
    for name in required:
        if name not in columns:
            raise DataError(path, 1, name, f"missing column (columns: {names})")
    line = 1
    for batch in table.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        cells = [
            [_cell_text(v) for v in batch.column(i).to_pylist()]
            for i in range(len(names))
        ]
        for fields in zip(*cells, strict=True):
            line += 1
            yield line, list(fields), columns
    if line == 1:
        raise DataError(path, 2, "(row)", "no data rows")


def _rows(path: Path, text: TextIO, required: Sequence[str]) -> Iterator[Row]:
    """Yield ``(line, fields, column_index)`` for each data row, checked for width."""
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, 1, "(header)", "empty file") from None
    columns = {name.strip(): i for i, name in enumerate(header)}
    for name in required:
        if name not in columns:
            raise DataError(path, 1, name, f"missing column (header: {header})")
    width = len(header)
    seen = False
    for fields in reader:
        line = reader.line_num
        if not fields:
            continue
        if len(fields) != width:
            missing = header[len(fields)] if len(fields) < width else "(extra)"
            raise DataError(
                path,
                line,
                missing,
                f"malformed row: {len(fields)} fields, {width} in header",
            )
        seen = True
        yield line, fields, columns
    if not seen:
        raise DataError(path, reader.line_num + 1, "(row)", "no data rows")


def _load_mssd_derived(path: Path) -> list[Session]:
    sessions: list[Session] = []
    done: set[str] = set()
    current: str | None = None
    tracks: list[str] = []
    skips: list[bool] = []
    levels: list[int | None] = []

    def close() -> None:
        if current is not None:
            sessions.append(
                Session(current, tuple(tracks), tuple(skips), levels=tuple(levels))
            )
            done.add(current)

    with _records(path, MSSD_DERIVED_COLUMNS) as rows:
        for line, fields, col in rows:
            user = fields[col["user_id"]]
            song = fields[col["song_id"]]
            previous = fields[col["previous_song"]]
            level = fields[col["skipped"]]
            if not user:
                raise DataError(path, line, "user_id", "empty user_id")
            if not song:
                raise DataError(path, line, "song_id", "empty song_id")
            if level not in MSSD_DERIVED_LEVELS:
                raise DataError(
                    path,
                    line,
                    "skipped",
                    f"unknown skip encoding {level!r}; expected 0..4",
                )
            if user != current:
                if user in done:
                    raise DataError(
                        path,
                        line,
                        "user_id",
                        f"rows of session {user!r} are not contiguous",
                    )
                close()
                current, tracks, skips, levels = user, [], [], []
                expected_previous = "-1"
            else:
                expected_previous = tracks[-1]
            if previous != expected_previous:
                # previous_song duplicates the row order; a mismatch means rows were
                # reordered or dropped, and the session order cannot be trusted.
                raise DataError(
                    path,
                    line,
                    "previous_song",
                    f"{previous!r}, but the previous row's song_id is "
                    f"{expected_previous!r}",
                )
            tracks.append(song)
            grade = MSSD_DERIVED_LEVELS[level]
            skips.append(level_is_skip(grade))  # skip_2 = graded level 0 or 1
            levels.append(grade)
        close()
    return sessions


def _parse_bool(path: Path, line: int, column: str, value: str) -> bool:
    try:
        return _BOOLEANS[value.strip()]
    except KeyError:
        raise DataError(
            path,
            line,
            column,
            f"unknown skip encoding {value!r}; expected True/False/1/0",
        ) from None


def _load_mssd_log(path: Path) -> list[Session]:
    grouped: dict[str, list[tuple[int, str, bool, int]]] = {}
    with _records(path, MSSD_LOG_COLUMNS) as records:
        for line, fields, col in records:
            session_id = fields[col["session_id"]]
            position = fields[col["session_position"]].strip()
            track = fields[col["track_id_clean"]]
            if not session_id:
                raise DataError(path, line, "session_id", "empty session_id")
            if not _INTEGER.match(position):
                raise DataError(
                    path, line, "session_position", f"not an integer: {position!r}"
                )
            if not track:
                raise DataError(path, line, "track_id_clean", "empty track id")
            skipped = _parse_bool(path, line, "skip_2", fields[col["skip_2"]])
            grouped.setdefault(session_id, []).append(
                (int(position), track, skipped, line)
            )
    sessions = []
    for session_id, rows in grouped.items():
        rows.sort(key=lambda row: row[0])
        for before, after in zip(rows, rows[1:], strict=False):
            if before[0] == after[0]:
                raise DataError(
                    path,
                    after[3],
                    "session_position",
                    f"position {after[0]} repeated in session {session_id!r}",
                )
        sessions.append(
            Session(
                session_id,
                tuple(row[1] for row in rows),
                tuple(row[2] for row in rows),
            )
        )
    return sessions


def _parse_level(path: Path, line: int, value: str, skipped: bool) -> int | None:
    """An event log's ``skip_level`` cell: empty = no grade, else a level that agrees
    with the row's ``event``."""
    text = value.strip()
    if not text:
        return None
    if text not in {str(level) for level in SKIP_LEVELS}:
        raise DataError(
            path,
            line,
            EVENT_LOG_LEVEL_COLUMN,
            f"unknown skip level {text!r}; expected one of {SKIP_LEVELS} or empty",
        )
    level = int(text)
    if level_is_skip(level) != skipped:
        raise DataError(
            path,
            line,
            EVENT_LOG_LEVEL_COLUMN,
            f"skip level {level} contradicts event {event_type(skipped)!r} "
            f"(a skip is a level <= {SKIP_MAX_LEVEL})",
        )
    return level


def _load_events(path: Path, session_gap_s: float) -> list[Session]:
    per_user: dict[str, list[tuple[float, str, bool, int | None]]] = {}
    with _records(path, EVENT_LOG_COLUMNS) as rows:
        for line, fields, col in rows:
            user = fields[col["user_id"]]
            track = fields[col["track_id"]]
            event = fields[col["event"]].strip()
            raw_time = fields[col["timestamp"]]
            if not user:
                raise DataError(path, line, "user_id", "empty user_id")
            if not track:
                raise DataError(path, line, "track_id", "empty track_id")
            try:
                skipped = is_skip(event)
            except ValueError:
                raise DataError(
                    path,
                    line,
                    "event",
                    f"unknown event type {event!r}; expected play|skip",
                ) from None
            try:
                timestamp = parse_timestamp(raw_time)
            except ValueError:
                raise DataError(
                    path,
                    line,
                    "timestamp",
                    f"bad timestamp {raw_time!r}; expected unix seconds or ISO-8601",
                ) from None
            level = None
            if EVENT_LOG_LEVEL_COLUMN in col:
                level = _parse_level(
                    path, line, fields[col[EVENT_LOG_LEVEL_COLUMN]], skipped
                )
            per_user.setdefault(user, []).append((timestamp, track, skipped, level))
    sessions: list[Session] = []
    for user, logged in per_user.items():
        events = [logged[i] for i in time_order([e[0] for e in logged])]
        starts = session_starts([e[0] for e in events], session_gap_s)
        for number, (start, end) in enumerate(
            zip(starts, [*starts[1:], len(events)], strict=True)
        ):
            chunk = events[start:end]
            levels = tuple(e[3] for e in chunk)
            sessions.append(
                Session(
                    f"{user}#{number}",
                    tuple(e[1] for e in chunk),
                    tuple(e[2] for e in chunk),
                    tuple(e[0] for e in chunk),
                    levels=None if all(v is None for v in levels) else levels,
                )
            )
    return sessions


def _load_ml1m(path: Path) -> list[Session]:
    per_user: dict[str, list[str]] = {}
    with _open_text(path) as text:
        for line, raw in enumerate(text, start=1):
            fields = raw.split()
            if not fields:
                continue
            if len(fields) != 2:
                column = "item" if len(fields) == 1 else "(extra)"
                raise DataError(
                    path,
                    line,
                    column,
                    f"malformed row: {len(fields)} fields, expected 2",
                )
            user, item = fields
            if not _INTEGER.match(user):
                raise DataError(path, line, "user", f"not an integer: {user!r}")
            if not _INTEGER.match(item):
                raise DataError(path, line, "item", f"not an integer: {item!r}")
            per_user.setdefault(user, []).append(item)
    if not per_user:
        raise DataError(path, 1, "(row)", "empty file")
    return [
        Session(user, tuple(items), (False,) * len(items))
        for user, items in per_user.items()
    ]


def write_event_log(
    sessions: Iterable[Session],
    path: Path,
    user_ids: Sequence[str] | None = None,
    *,
    session_gap_s: float = DEFAULT_SESSION_GAP_S,
    start_time: float = 1_700_000_000.0,
) -> int:
    """Write sessions as the event log ``user_id,track_id,event,timestamp,skip_level``
    (``skip_level`` empty for an event without a grade).

    Args:
        sessions: the sessions to write, oldest event first each.
        path: output file; gzip-compressed when it ends in ``.gz``, Parquet when it
            ends in ``.parquet``.
        user_ids: per session, the listener it belongs to; default each session's
            ``session_id`` up to a ``#`` (so ``events``-loaded sessions round-trip).
        session_gap_s: for sessions without timestamps, consecutive sessions of one
            user are placed more than this far apart, so ``load_sessions`` splits them.
        start_time: unix time of the first synthesised timestamp.

    Returns:
        The number of events written.
    """
    sessions = list(sessions)
    if user_ids is not None and len(user_ids) != len(sessions):
        raise ValueError(f"{len(user_ids)} user ids for {len(sessions)} sessions")
    users = (
        list(user_ids)
        if user_ids is not None
        else [s.session_id.split("#", 1)[0] for s in sessions]
    )
    next_free: dict[str, float] = {}

    def rows() -> Iterator[tuple[str, str, str, str, str]]:
        for user, session in zip(users, sessions, strict=True):
            times = session.timestamps
            if times is None:
                # One event a minute, sessions of one user two gaps apart.
                begin = next_free.get(user, start_time)
                times = tuple(begin + 60.0 * i for i in range(len(session)))
                next_free[user] = times[-1] + 2 * session_gap_s if times else begin
            levels = session.levels or (None,) * len(session)
            for track, skipped, timestamp, level in zip(
                session.track_ids, session.skipped, times, levels, strict=True
            ):
                yield event_log_row(user, track, skipped, timestamp, level)

    path = Path(path)
    if path.suffix == ".parquet":
        return _write_parquet_log(list(rows()), path)
    opener = gzip.open if path.suffix == ".gz" else open
    written = 0
    with opener(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(EVENT_LOG_HEADER)
        for row in rows():
            writer.writerow(row)
            written += 1
    return written


def _write_parquet_log(rows: Sequence[tuple[str, ...]], path: Path) -> int:
    """The event log as Parquet with typed columns: strings, float64 unix seconds
    and a nullable int8 skip level, as a warehouse export would type them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    user, track, event, timestamp, level = zip(*rows, strict=True) if rows else [()] * 5
    table = pa.table(
        {
            "user_id": pa.array(user, pa.string()),
            "track_id": pa.array(track, pa.string()),
            "event": pa.array(event, pa.string()),
            "timestamp": pa.array([float(t) for t in timestamp], pa.float64()),
            EVENT_LOG_LEVEL_COLUMN: pa.array(
                [int(v) if v else None for v in level], pa.int8()
            ),
        }
    )
    pq.write_table(table, path)
    return len(rows)
