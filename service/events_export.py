"""``skiprec events export --out FILE [--redis-url URL | --data-dir DIR]``.

Writes the live event stream as the event log (``skiprec.events``: ``user_id,
track_id,event,timestamp``), oldest first, each (user, event id) once, which
``skiprec train --format events`` reads: serving's traffic becomes training data.
Without ``--redis-url`` it reads the embedded Redis in ``--data-dir`` (default
SKIPREC_DATA_DIR or ./var), starting it if the service is not running.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import redis.asyncio as aioredis

from service.event_log import iter_log
from service.redis_client import EmbeddedRedis
from skiprec.events import EVENT_LOG_HEADER, event_log_row

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skiprec events", description="Work with the live event log."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser(
        "export", help="write the live event stream as an event-log CSV"
    )
    export.add_argument("--out", type=Path, required=True, help="CSV file to write")
    source = export.add_mutually_exclusive_group()
    source.add_argument(
        "--redis-url", default=os.environ.get("SKIPREC_REDIS_URL"), help="Redis URL"
    )
    source.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="embedded Redis data directory (default SKIPREC_DATA_DIR or ./var)",
    )
    return parser


async def export_events(redis_url: str, out: Path) -> int:
    """Write the stream behind ``redis_url`` to ``out``; returns the event count."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    written = 0
    try:
        with out.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(EVENT_LOG_HEADER)
            async for event in iter_log(client):
                writer.writerow(
                    event_log_row(
                        event.user_id,
                        event.track_id,
                        event.skipped,
                        event.timestamp,
                        event.level,
                    )
                )
                written += 1
    finally:
        await client.aclose()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    embedded = None
    url = args.redis_url if args.data_dir is None else None
    if url is None:
        data_dir = args.data_dir or Path(os.environ.get("SKIPREC_DATA_DIR", "var"))
        embedded = EmbeddedRedis(data_dir)
        url = embedded.url
    try:
        count = asyncio.run(export_events(url, args.out))
    finally:
        if embedded is not None:
            embedded.stop()
    logger.info("wrote %d events to %s", count, args.out)
    return 0
