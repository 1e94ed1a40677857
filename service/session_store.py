"""The only module that talks to Redis about sessions: append, read, reset, export.

State transitions and their atomicity:
- append: per user, ONE Lua script (``lua/append_events.lua``) dedups by event id,
  RPUSHes, LTRIMs to ``session_max_events`` and refreshes the TTLs. A request's users
  go out in one non-transactional pipeline (one round trip), followed in the same
  pipeline by one ``XADD ... MAXLEN ~`` per event onto the global stream.
- The stream XADD cannot live inside the script: on Redis Cluster the stream's slot is
  not the user's. So the stream is *at least once*: if the pipeline fails after a
  script ran, the client gets a 503, retries, the script reports the event as a
  duplicate and the stream gets it again. ``skiprec events export`` drops repeated
  event ids. An event that got a 202 is in both the session and the stream; an event
  whose request got a 503 and was never retried may be in the session only.
- read: one ``LRANGE`` of the user's list; the current session is the events after the
  last inactivity gap (event timestamps), and empty once ``now - last > gap``.

``redis`` connection and timeout errors become ``SessionStoreUnavailable``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis import exceptions as redis_errors

from service import keys
from service.errors import SessionStoreUnavailable

APPEND_SCRIPT = files("service").joinpath("lua/append_events.lua").read_text()
FIELD_SEPARATOR = "|"  # never in an id: ids are [A-Za-z0-9._:@-]
TYPE_CODES = {"play": "p", "skip": "s"}
TYPE_NAMES = {code: name for name, code in TYPE_CODES.items()}
UNAVAILABLE_REPLY_PREFIXES = ("OOM", "READONLY", "LOADING", "CLUSTERDOWN", "TRYAGAIN")


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as kept in Redis: ``event_id`` is "" when the client sent none."""

    event_id: str
    user_id: str
    track_id: str
    event_type: str  # "play" | "skip"
    timestamp: float  # unix seconds

    def encode(self) -> str:
        return FIELD_SEPARATOR.join(
            (
                self.event_id,
                self.track_id,
                TYPE_CODES[self.event_type],
                f"{self.timestamp:.3f}",
            )
        )

    @classmethod
    def decode(cls, user_id: str, raw: str) -> StoredEvent:
        event_id, track_id, code, timestamp = raw.split(FIELD_SEPARATOR)
        return cls(event_id, user_id, track_id, TYPE_NAMES[code], float(timestamp))


@dataclass(frozen=True, slots=True)
class StoreConfig:
    session_gap_s: float
    session_max_events: int
    session_ttl_s: int
    dedup_ttl_s: int
    stream_maxlen: int


@dataclass(frozen=True, slots=True)
class AppendResult:
    accepted: int
    duplicates: int
    accepted_skips: int


@contextmanager
def store_errors() -> Iterator[None]:
    """Translate an unreachable or refusing Redis into ``SessionStoreUnavailable``."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
        raise SessionStoreUnavailable(
            f"session store unavailable ({type(exc).__name__})"
        ) from exc
    except redis_errors.ResponseError as exc:
        if str(exc).startswith(UNAVAILABLE_REPLY_PREFIXES):
            raise SessionStoreUnavailable(
                f"session store refused the write ({str(exc).split()[0]})"
            ) from exc
        raise


def current_session(
    events: Sequence[StoredEvent], gap_s: float, now: float
) -> list[StoredEvent]:
    """The events after the last gap longer than ``gap_s``, oldest first.

    A session whose last event is more than ``gap_s`` before ``now`` is over: empty.
    """
    if not events or now - events[-1].timestamp > gap_s:
        return []
    start = 0
    for i in range(len(events) - 1, 0, -1):
        if events[i].timestamp - events[i - 1].timestamp > gap_s:
            start = i
            break
    return list(events[start:])


class SessionStore:
    """Per-user live sessions and the global event stream, held by composition."""

    def __init__(
        self, client: Any, config: StoreConfig, read_client: Any | None = None
    ) -> None:
        self.client = client
        self.read_client = read_client if read_client is not None else client
        self.config = config
        self._script_sha: str | None = None

    async def register(self) -> None:
        """Load the append script once (on every primary when clustered)."""
        with store_errors():
            self._script_sha = await self.client.script_load(APPEND_SCRIPT)

    async def ping(self) -> bool:
        with store_errors():
            return bool(await self.read_client.ping())

    async def append(self, events: Sequence[StoredEvent], now: float) -> AppendResult:
        """Store a batch (any users); returns only once Redis holds every event."""
        by_user: dict[str, list[StoredEvent]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event)
        with store_errors():
            try:
                replies = await self._append_pipeline(by_user, events, now)
            except redis_errors.NoScriptError:
                # The server lost its script cache (restart, failover): the NOSCRIPT
                # replies mean no script ran, so loading and resending is safe.
                await self.register()
                replies = await self._append_pipeline(by_user, events, now)
        accepted = duplicates = skips = 0
        for reply in replies[: len(by_user)]:
            accepted += int(reply[0])
            duplicates += int(reply[1])
            skips += int(reply[2])
        return AppendResult(accepted, duplicates, skips)

    async def _append_pipeline(
        self,
        by_user: dict[str, list[StoredEvent]],
        events: Sequence[StoredEvent],
        now: float,
    ) -> list[Any]:
        if self._script_sha is None:
            await self.register()
        cfg = self.config
        pipe = self.client.pipeline(transaction=False)
        for user_id, user_events in by_user.items():
            args: list[str | int | float] = [
                cfg.session_max_events,
                cfg.session_ttl_s,
                cfg.dedup_ttl_s,
                repr(now),
            ]
            for event in user_events:
                args += (event.event_id, event.encode())
            # execute_command, not pipe.evalsha: redis-py's ClusterPipeline blocks
            # the evalsha helper, while a raw EVALSHA is routed by its keys' slot.
            pipe.execute_command(
                "EVALSHA", self._script_sha, 2, *keys.user_keys(user_id), *args
            )
        for event in events:
            pipe.xadd(
                keys.STREAM_KEY,
                {
                    "id": event.event_id,
                    "u": event.user_id,
                    "t": event.track_id,
                    "e": event.event_type,
                    "ts": f"{event.timestamp:.3f}",
                },
                maxlen=cfg.stream_maxlen,
                approximate=True,
            )
        return list(await pipe.execute())

    async def read_events(self, user_id: str) -> list[StoredEvent]:
        """Every stored event of the user (at most ``session_max_events``)."""
        with store_errors():
            raw = await self.read_client.lrange(keys.session_events_key(user_id), 0, -1)
        return [StoredEvent.decode(user_id, _text(item)) for item in raw]

    async def read_session(self, user_id: str, now: float) -> list[StoredEvent]:
        """The user's current session (see ``current_session``), oldest first."""
        events = await self.read_events(user_id)
        return current_session(events, self.config.session_gap_s, now)

    async def reset(self, user_id: str) -> None:
        """Erase the user's session and dedup state (the stream keeps its copy)."""
        with store_errors():
            await self.client.delete(*keys.user_keys(user_id))

    async def iter_stream(self, batch: int = 10_000) -> AsyncIterator[StoredEvent]:
        """The live event log oldest first, each (user, event id) once."""
        seen: set[tuple[str, str]] = set()
        start = "-"
        while True:
            with store_errors():
                entries = await self.client.xrange(
                    keys.STREAM_KEY, min=start, max="+", count=batch
                )
            for _entry_id, fields in entries:
                event = _stream_event(fields)
                if event.event_id:
                    # Event ids are unique per user (that is the dedup scope).
                    key = (event.user_id, event.event_id)
                    if key in seen:
                        continue
                    seen.add(key)
                yield event
            if len(entries) < batch:
                return
            start = "(" + _text(entries[-1][0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_event(fields: dict[Any, Any]) -> StoredEvent:
    data = {_text(k): _text(v) for k, v in fields.items()}
    timestamp = float(data["ts"])
    if not math.isfinite(timestamp):
        raise ValueError(f"stream entry with a non-finite timestamp: {data!r}")
    return StoredEvent(data["id"], data["u"], data["t"], data["e"], timestamp)
