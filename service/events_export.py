"""``skiprec events export --out FILE [--redis-url URL | --data-dir DIR] [--reader NAME]
[--from-start] [--dedup-window-s S]``.

Writes the live event log's events that the reader (default ``export``) has not
exported yet as an event log (``skiprec.events``: ``user_id,track_id,event,
timestamp,skip_level``), oldest first, each (user, event id) once per dedup window,
which ``skiprec train --format events`` reads: serving's traffic becomes training
data. ``--from-start`` re-reads everything the log still holds.

Each export writes a NEW file, never appends and never replaces one (an existing
``--out`` is refused: it holds an earlier export's events): the file is written
under a temporary name, fsynced and linked into place, and only then is the
reader's cursor committed (``service.event_log.commit_cursor``). A crash before the
commit leaves the cursor where it was, so the next export re-reads those events: a
file may repeat a crashed export's events, never miss one. A second export with the
same reader that commits first wins; the other removes its file and fails.

Events trimmed off the log (``SKIPREC_STREAM_MAXLEN``) before the reader got to
them are counted from the entries' sequence numbers and reported as a WARNING and
in the summary line; the exit status stays 0, since the file and cursor are good
and a rerun cannot bring them back (export more often, or raise the bound).
Exit status 1: Redis unreachable, the output exists or cannot be written, or
another export with the reader won.

``--redis-url`` takes the service's URLs (``redis+cluster://host:port`` reads a
Cluster). Without it the embedded Redis in ``--data-dir`` (default SKIPREC_DATA_DIR
or ./var) is used, started if no one runs it, and left running if someone else
(``skiprec serve``) still does (``service.redis_client.EmbeddedRedis``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from service.event_log import (
    DEFAULT_DEDUP_WINDOW_S,
    START,
    LogRead,
    ReadStats,
    commit_cursor,
    load_cursor,
)
from service.redis_client import EmbeddedRedis
from service.settings import cluster_node_url
from skiprec.events import EVENT_LOG_HEADER, ID_PATTERN, event_log_row

logger = logging.getLogger(__name__)

DEFAULT_READER = "export"


class ExportError(Exception):
    """Base of the export's own failures (exit status 1).

    Hierarchy: ``ExportError`` -> ``OutputExists``, ``ReaderConflict``.
    """


class OutputExists(ExportError):
    """``--out`` is already there: it holds an earlier export's events."""


class ReaderConflict(ExportError):
    """Another export with the same reader committed while this one ran."""


@dataclass(frozen=True, slots=True)
class ExportOptions:
    out: Path
    reader: str = DEFAULT_READER
    from_start: bool = False
    dedup_window_s: float = DEFAULT_DEDUP_WINDOW_S
    batch: int = 10_000


def _reader_name(value: str) -> str:
    if not re.fullmatch(ID_PATTERN, value):
        raise argparse.ArgumentTypeError(f"{value!r}: use letters, digits and ._:@-")
    return value


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec events", description="Work with the live event log."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export", help="write the live events not exported yet as an event-log CSV"
    )
    export.add_argument(
        "--out", type=Path, required=True, help="new CSV file to write (never replaced)"
    )
    # --- where the log is
    source = export.add_mutually_exclusive_group()
    source.add_argument(
        "--redis-url",
        default=os.environ.get("SKIPREC_REDIS_URL"),
        help="Redis URL, redis+cluster://host:port for a Cluster",
    )
    source.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded Redis data directory (default SKIPREC_DATA_DIR or ./var)",
    )
    # --- what to read
    export.add_argument(
        "--reader",
        type=_reader_name,
        default=DEFAULT_READER,
        help=f"cursor name: resume where it stopped (default {DEFAULT_READER})",
    )
    export.add_argument(
        "--from-start",
        action="store_true",
        help="ignore the cursor and read all the log still holds",
    )
    export.add_argument(
        "--dedup-window-s",
        type=_positive_seconds,
        default=os.environ.get("SKIPREC_DEDUP_TTL_S", str(DEFAULT_DEDUP_WINDOW_S)),
        help="drop a repeated event id within this many seconds of its first "
        "occurrence (default SKIPREC_DEDUP_TTL_S, the service's window)",
    )
    return parser


def connect(url: str) -> Any:
    """A decode_responses async client of ``url`` (a Cluster for its scheme)."""
    node = cluster_node_url(url)
    if node is not None:
        return RedisCluster.from_url(node, decode_responses=True)
    return aioredis.Redis.from_url(url, decode_responses=True)


async def export_events(client: Any, options: ExportOptions) -> ReadStats:
    """Write the reader's new events to ``options.out``, then commit its cursor."""
    if options.out.exists():
        raise OutputExists(f"{options.out} exists: it holds an earlier export")
    held = await load_cursor(client, options.reader)
    after = START if options.from_start or held is None else held
    read = LogRead(
        client, after, dedup_window_s=options.dedup_window_s, batch=options.batch
    )
    partial = options.out.with_name(f".{options.out.name}.{os.getpid()}.partial")
    try:
        with partial.open("x", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(EVENT_LOG_HEADER)
            async for event in read:
                writer.writerow(
                    event_log_row(
                        event.user_id,
                        event.track_id,
                        event.skipped,
                        event.timestamp,
                        event.level,
                    )
                )
            handle.flush()
            os.fsync(handle.fileno())
        # A hard link never replaces a file, unlike rename: a concurrent export's
        # file (or one created since the check above) is refused, not lost.
        try:
            os.link(partial, options.out)
        except FileExistsError:
            raise OutputExists(f"{options.out} appeared during the export") from None
    finally:
        partial.unlink(missing_ok=True)
    _fsync_directory(options.out.parent)
    stats = read.stats
    if stats.entries and not await commit_cursor(
        client, options.reader, held, stats.position
    ):
        options.out.unlink()  # its events are the winner's, or after its cursor
        raise ReaderConflict(
            f"another export with reader {options.reader!r} committed first; "
            f"{options.out} removed, run the export again"
        )
    return stats


def _fsync_directory(directory: Path) -> None:
    """Make the new file's name durable, not only its contents."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def _run(url: str, options: ExportOptions) -> ReadStats:
    client = connect(url)
    try:
        return await export_events(client, options)
    finally:
        await client.aclose()


def report(stats: ReadStats, options: ExportOptions) -> None:
    """The summary line, and a WARNING when events were trimmed before the read."""
    if stats.trimmed:
        logger.warning(
            "%d events were trimmed off the log before reader %r read them "
            "(SKIPREC_STREAM_MAXLEN bounds the log): export more often",
            stats.trimmed,
            options.reader,
        )
    logger.info(
        "exported %d events to %s: reader %r read %d entries, dropped %d "
        "duplicates, %d trimmed before read; cursor at %s (seq %d)",
        stats.events,
        options.out,
        options.reader,
        stats.entries,
        stats.duplicates,
        stats.trimmed,
        stats.position.entry_id,
        stats.position.seq,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options = ExportOptions(
        out=args.out,
        reader=args.reader,
        from_start=args.from_start,
        dedup_window_s=args.dedup_window_s,
    )
    embedded = None
    url = args.redis_url if args.data_dir is None else None
    if url is None:
        data_dir = args.data_dir or Path(os.environ.get("SKIPREC_DATA_DIR", "var"))
        embedded = EmbeddedRedis(data_dir)
        url = embedded.url
    try:
        stats = asyncio.run(_run(url, options))
    except (ExportError, RedisError, OSError) as exc:
        logger.error("export failed: %s", exc)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
    report(stats, options)
    return 0
