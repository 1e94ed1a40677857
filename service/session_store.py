"""The only module that talks to Redis about sessions: append, read, reset, export.

State transitions and their atomicity:
- append: ONE Lua script call (``lua/append_events.lua``) per Redis hash slot (on a
  standalone server: one per request) dedups by event id, RPUSHes, LTRIMs each user's
  list to ``session_max_events`` and refreshes the TTLs; each user's part is atomic.
  The calls go out in one non-transactional pipeline (one round trip), followed in
  the same pipeline by ONE ``XADD ... MAXLEN ~`` carrying all of the request's events
  as a single stream entry (a few commands per request, whatever its size: redis-py's
  per-command packing and parsing was most of a batched request's cost).
- The stream XADD cannot live inside the script: on Redis Cluster the stream's slot is
  not the users'. So the stream is *at least once*: if the pipeline fails after a
  script ran, the client gets a 503, retries, the script reports the event as a
  duplicate and the stream gets it again. ``skiprec events export`` drops repeated
  event ids. An event that got a 202 is in both the session and the stream; an event
  whose request got a 503 and was never retried may be in the session only.
- read for the model: one script call (``lua/read_session.lua``) cuts the current
  session inside Redis and returns only the newest ``window`` events plus the tracks
  the exclusion rule needs from the older ones, as three strings.
- read in full (``GET /users/{id}/session``): one ``LRANGE``; the current session is
  the events after the last inactivity gap (event timestamps), and empty once
  ``now - last > gap``.

Reads run under a deadline (``StoreConfig.read_timeout_s``) that bounds the
popularity fallback when Redis hangs; see ``_within``. ``redis`` connection and
timeout errors become ``SessionStoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from service import keys
from service.errors import SessionStoreUnavailable

APPEND_SCRIPT = files("service").joinpath("lua/append_events.lua").read_text()
READ_SCRIPT = files("service").joinpath("lua/read_session.lua").read_text()
READ_SCRIPT_SHA = hashlib.sha1(READ_SCRIPT.encode()).hexdigest()
FIELD_SEPARATOR = "|"  # never in an id: ids are [A-Za-z0-9._:@-]
USER_SEPARATOR = "|"  # between users' pairs in the append script's ARGV
STREAM_FIELD = "events"  # one stream entry: a request's events, one per line
# A deadline timer that fires late (a busy loop) runs before the loop reads a reply
# that is already in the socket (libuv runs timers before polling): this many extra
# loop turns let such a reply land instead of a spurious fallback.
DEADLINE_GRACE_TURNS = 3
T = TypeVar("T")
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
    read_timeout_s: float | None = None  # None: only the client's socket timeout


@dataclass(frozen=True, slots=True)
class ModelInput:
    """The part of the current session that a ranking needs, oldest first.

    ``track_ids``/``skipped``: the newest events (at most the window asked for);
    ``excluded``: distinct tracks of the session's older events that the exclusion
    rule removes (skipped ones; played ones too when asked).
    """

    track_ids: tuple[str, ...]
    skipped: tuple[bool, ...]
    excluded: tuple[str, ...]


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
        self._clustered = isinstance(client, RedisCluster)

    async def register(self) -> None:
        """Load the append script once (on every primary when clustered)."""
        with store_errors():
            self._script_sha = await self.client.script_load(APPEND_SCRIPT)

    async def ping(self) -> bool:
        with store_errors():
            return bool(await self._within(self.read_client.ping()))

    async def _within(self, read: Awaitable[T]) -> T:
        """``read`` under the read deadline; a ``TimeoutError`` once it has passed.

        The read client's own socket timeout is longer: a timer inside redis-py that
        fires late on a busy loop would cancel a read whose reply has arrived (see
        ``DEADLINE_GRACE_TURNS``), turning load into spurious fallbacks.
        """
        timeout = self.config.read_timeout_s
        if timeout is None:
            return await read
        task = asyncio.ensure_future(read)
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
            for _ in range(DEADLINE_GRACE_TURNS):
                if done or task.done():
                    return task.result()
                await asyncio.sleep(0)
            if task.done():
                return task.result()
        finally:
            if not task.done():
                task.cancel()  # redis-py drops the connection of a cancelled read
        raise redis_errors.TimeoutError(f"no reply within {timeout} s")

    async def append(self, events: Sequence[StoredEvent], now: float) -> AppendResult:
        """Store a batch (any users); returns only once Redis holds every event."""
        calls: dict[int, dict[str, list[StoredEvent]]] = {}
        for event in events:
            slot = (
                key_slot(keys.session_events_key(event.user_id).encode())
                if self._clustered
                else 0
            )
            calls.setdefault(slot, {}).setdefault(event.user_id, []).append(event)
        with store_errors():
            try:
                replies = await self._append_pipeline(calls, events, now)
            except redis_errors.NoScriptError:
                # The server lost its script cache (restart, failover): the NOSCRIPT
                # replies mean no script ran, so loading and resending is safe.
                await self.register()
                replies = await self._append_pipeline(calls, events, now)
        accepted = duplicates = skips = 0
        for reply in replies[: len(calls)]:
            accepted += int(reply[0])
            duplicates += int(reply[1])
            skips += int(reply[2])
        return AppendResult(accepted, duplicates, skips)

    async def _append_pipeline(
        self,
        calls: dict[int, dict[str, list[StoredEvent]]],
        events: Sequence[StoredEvent],
        now: float,
    ) -> list[Any]:
        if self._script_sha is None:
            await self.register()
        cfg = self.config
        pipe = self.client.pipeline(transaction=False)
        for by_user in calls.values():
            script_keys: list[str] = []
            args: list[str | int] = [
                cfg.session_max_events,
                cfg.session_ttl_s,
                cfg.dedup_ttl_s,
                repr(now),
            ]
            for user_id, user_events in by_user.items():
                if script_keys:
                    args.append(USER_SEPARATOR)
                script_keys += keys.user_keys(user_id)
                for event in user_events:
                    args += (event.event_id, event.encode())
            # execute_command, not pipe.evalsha: redis-py's ClusterPipeline blocks
            # the evalsha helper, while a raw EVALSHA is routed by its keys' slot.
            pipe.execute_command(
                "EVALSHA",
                self._script_sha,
                len(script_keys),
                *script_keys,
                *args,
            )
        pipe.xadd(
            keys.STREAM_KEY,
            {STREAM_FIELD: "\n".join(_stream_line(event) for event in events)},
            maxlen=cfg.stream_maxlen,
            approximate=True,
        )
        return list(await pipe.execute())

    async def read_events(self, user_id: str) -> list[StoredEvent]:
        """Every stored event of the user (at most ``session_max_events``)."""
        with store_errors():
            raw = await self._within(
                self.read_client.lrange(keys.session_events_key(user_id), 0, -1)
            )
        return [StoredEvent.decode(user_id, _text(item)) for item in raw]

    async def read_session(self, user_id: str, now: float) -> list[StoredEvent]:
        """The user's current session (see ``current_session``), oldest first."""
        events = await self.read_events(user_id)
        return current_session(events, self.config.session_gap_s, now)

    async def read_model_input(
        self, user_id: str, now: float, window: int, exclude_played: bool
    ) -> ModelInput:
        """The current session's newest ``window`` events and the older exclusions.

        Equal to cutting ``read_session`` (see ``ModelInput``), in one round trip
        that returns three strings however long the stored session is.
        """
        args = (
            keys.session_events_key(user_id),
            repr(now),
            repr(float(self.config.session_gap_s)),
            window,
            int(exclude_played),
        )
        with store_errors():
            try:
                reply = await self._within(
                    self.read_client.execute_command(
                        "EVALSHA", READ_SCRIPT_SHA, 1, *args
                    )
                )
            except redis_errors.NoScriptError:
                # EVAL runs the script and caches it for the next EVALSHA.
                reply = await self._within(
                    self.read_client.execute_command("EVAL", READ_SCRIPT, 1, *args)
                )
        tracks, codes, excluded = (_text(part) for part in reply)
        if not tracks:
            return ModelInput((), (), ())
        return ModelInput(
            tuple(tracks.split(FIELD_SEPARATOR)),
            tuple(code == "s" for code in codes),
            tuple(excluded.split(FIELD_SEPARATOR)) if excluded else (),
        )

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
                for event in _stream_events(fields):
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


def _stream_line(event: StoredEvent) -> str:
    """``event_id|user_id|track_id|p/s|timestamp``: one event of a stream entry."""
    return FIELD_SEPARATOR.join(
        (
            event.event_id,
            event.user_id,
            event.track_id,
            TYPE_CODES[event.event_type],
            f"{event.timestamp:.3f}",
        )
    )


def _stream_events(fields: dict[Any, Any]) -> list[StoredEvent]:
    """The events of one stream entry: a request's batch, or (entries written before
    batching) one event as fields ``id u t e ts``."""
    data = {_text(k): _text(v) for k, v in fields.items()}
    if STREAM_FIELD in data:
        parts = [line.split(FIELD_SEPARATOR) for line in data[STREAM_FIELD].split("\n")]
        events = [
            StoredEvent(event_id, user_id, track_id, TYPE_NAMES[code], float(stamp))
            for event_id, user_id, track_id, code, stamp in parts
        ]
    else:
        events = [
            StoredEvent(data["id"], data["u"], data["t"], data["e"], float(data["ts"]))
        ]
    for event in events:
        if not math.isfinite(event.timestamp):
            raise ValueError(f"stream entry with a non-finite timestamp: {data!r}")
    return events
