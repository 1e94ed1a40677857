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
  session inside Redis and returns only the newest ``window`` events plus the
  distinct (track, play/skip) pairs of the older ones, as four strings; the
  exclusion policy (``skiprec.policy``) is applied in Python, never in Lua.
- read in full (``GET /users/{id}/session``): one ``LRANGE``; the current session is
  cut by ``skiprec.sessions``.

Reads run under a deadline (``StoreConfig.read_timeout_s``) that bounds the
popularity fallback when Redis hangs; see ``_within``. ``redis`` connection and
timeout errors, and the replies of a Redis that refuses work for now (out of memory,
read-only replica, cluster down), become ``SessionStoreUnavailable``.
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
from skiprec.events import FIELD_SEPARATOR, StoredEvent, is_skip, parse_code
from skiprec.sessions import current_session_start

APPEND_SCRIPT = files("service").joinpath("lua/append_events.lua").read_text()
READ_SCRIPT = files("service").joinpath("lua/read_session.lua").read_text()
READ_SCRIPT_SHA = hashlib.sha1(READ_SCRIPT.encode()).hexdigest()
USER_SEPARATOR = "|"  # between users' pairs in the append script's ARGV
STREAM_FIELD = "events"  # one stream entry: a request's events, one per line
# A deadline timer that fires late (a busy loop) runs before the loop reads a reply
# that is already in the socket (libuv runs timers before polling): this many extra
# loop turns let such a reply land instead of a spurious fallback.
DEADLINE_GRACE_TURNS = 3
T = TypeVar("T")
# Replies of a Redis that is up but refuses to work now (redis-py maps each error
# prefix to its class; a pipeline rewrites the message, never the class).
REFUSALS: tuple[type[redis_errors.RedisError], ...] = (
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    session_gap_s: float
    session_max_events: int
    session_ttl_s: int
    dedup_ttl_s: int
    stream_maxlen: int
    read_timeout_s: float | None = None  # None: only the client's socket timeout


@dataclass(frozen=True, slots=True)
class SessionWindow:
    """The part of the current session that a ranking needs, oldest first.

    ``track_ids``/``skipped``: the newest events (at most the window asked for);
    ``earlier``: the distinct ``(track_id, skipped)`` pairs of the session's older
    events, which only the exclusion policy reads.
    """

    track_ids: tuple[str, ...] = ()
    skipped: tuple[bool, ...] = ()
    earlier: tuple[tuple[str, bool], ...] = ()
    levels: tuple[int | None, ...] = ()  # per window event, its skip level if sent

    def events(self) -> list[tuple[str, bool]]:
        """Every ``(track_id, skipped)`` the policy weighs: earlier and window."""
        return [*self.earlier, *zip(self.track_ids, self.skipped, strict=True)]


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
    except REFUSALS as exc:
        raise SessionStoreUnavailable(
            f"session store refused the command ({type(exc).__name__})"
        ) from exc


def current_session(
    events: Sequence[StoredEvent], gap_s: float, now: float
) -> list[StoredEvent]:
    """The current session of a listener's stored events (``skiprec.sessions``)."""
    start = current_session_start([e.timestamp for e in events], gap_s, now)
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
            {STREAM_FIELD: "\n".join(event.stream_line() for event in events)},
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

    async def read_window(self, user_id: str, now: float, window: int) -> SessionWindow:
        """The current session's newest ``window`` events and its earlier tracks.

        Equal to cutting ``read_session`` (see ``SessionWindow``), in one round trip
        that returns four strings however long the stored session is.
        """
        args = (
            keys.session_events_key(user_id),
            repr(now),
            repr(float(self.config.session_gap_s)),
            window,
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
        tracks, codes, earlier_tracks, earlier_codes = (_text(p) for p in reply)
        if not tracks:
            return SessionWindow()
        newest = [parse_code(code) for code in codes]
        earlier = (
            zip(
                earlier_tracks.split(FIELD_SEPARATOR),
                (parse_code(code)[0] for code in earlier_codes),
                strict=True,
            )
            if earlier_tracks
            else ()
        )
        return SessionWindow(
            tuple(tracks.split(FIELD_SEPARATOR)),
            tuple(skipped for skipped, _ in newest),
            tuple(earlier),
            tuple(level for _, level in newest),
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


def _stream_events(fields: dict[Any, Any]) -> list[StoredEvent]:
    """The events of one stream entry: a request's batch, or (entries written before
    batching) one event as fields ``id u t e ts``."""
    data = {_text(k): _text(v) for k, v in fields.items()}
    if STREAM_FIELD in data:
        lines = data[STREAM_FIELD].split("\n")
        events = [StoredEvent.from_stream_line(line) for line in lines]
    else:
        skipped = is_skip(data["e"])
        events = [
            StoredEvent(data["id"], data["u"], data["t"], skipped, float(data["ts"]))
        ]
    for event in events:
        if not math.isfinite(event.timestamp):
            raise ValueError(f"stream entry with a non-finite timestamp: {data!r}")
    return events
