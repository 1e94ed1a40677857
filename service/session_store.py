"""The only module that talks to Redis about sessions: append, read, reset.

State transitions and their atomicity:
- append: ONE Lua script call (``lua/append_events.lua``) per Redis hash slot dedups
  by event id, inserts each user's events in time order, LTRIMs each user's list to
  ``session_max_events``, refreshes the TTLs and attributes the new events to the
  user's served lists; each user's part is atomic. Calls never mix slots (a
  Cluster and a sharding proxy refuse CROSSSLOT) unless the deployment says it is
  one server (``StoreConfig.cross_slot``): then a batch is one call per
  ``APPEND_USERS_PER_CALL`` users instead of one per slot, which spares Redis most
  of the fixed cost of a script call.
  The calls go out in one non-transactional pipeline (one round trip), followed in
  the same pipeline by the event log's one call (``service.event_log``).
- Exactly-once effect: every event has an id. A client retry is a duplicate; a
  resend of the same call (redis-py after a lost connection) finds its ids stored
  with its own receive time and counts them as accepted once; after NOSCRIPT only
  the commands that did not run are sent again (``_execute``). The log is at least
  once (``service.event_log``): a 202 means the event is in both the session (unless
  late) and the log; a 503 that the client never retries may leave it in either.
- read for the model: one script call (``lua/read_session.lua``) cuts the current
  session inside Redis and returns only the newest ``window`` events plus the
  distinct (track, play/skip) pairs of the older ones, as four strings; the
  exclusion policy (``skiprec.policy``) is applied in Python, never in Lua.
- read in full (``GET /users/{id}/session``): one ``LRANGE``; the current session is
  cut by ``skiprec.sessions``.
- served lists and their outcomes (``service.outcomes``): a served list is kept by
  one script call in the user's slot after its answer was sent; the append script
  attributes the new events to them in the same call (the lists are in the user's
  slot) and, only when some event was attributed, the attributions are counted in
  a second round trip, before the 202.

Every append, keep and window read shares its round trip with the other callers of
the same event-loop turn (``service.autopipeline``): one pipeline for writes, one
for reads, each on its own pool.

Reads run under a deadline (``StoreConfig.read_timeout_s``) that bounds the
popularity fallback when Redis hangs; see ``_within``. ``redis`` connection and
timeout errors, and the replies of a Redis that refuses work for now (out of memory,
read-only replica, cluster down), become ``SessionStoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.crc import key_slot

from service import keys
from service.autopipeline import AutoPipeline
from service.errors import SessionStoreUnavailable
from service.event_log import LOG_SCRIPT, log_command
from service.outcomes import (
    SCRIPTS as OUTCOME_SCRIPTS,
)
from service.outcomes import (
    ArmCounts,
    Attribution,
    ServedList,
    count_command,
    keep_commands,
    parse_counts,
)
from skiprec.events import FIELD_SEPARATOR, StoredEvent, parse_code
from skiprec.sessions import current_session_start

APPEND_SCRIPT = files("service").joinpath("lua/append_events.lua").read_text()
APPEND_SCRIPT_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest()
READ_SCRIPT = files("service").joinpath("lua/read_session.lua").read_text()
READ_SCRIPT_SHA = hashlib.sha1(READ_SCRIPT.encode()).hexdigest()
USER_SEPARATOR = "|"  # between users' triples in the append script's ARGV
# A script blocks the server while it runs: a long batch goes as several calls so
# that other clients' reads wait for one chunk, not for the whole batch.
APPEND_USERS_PER_CALL = 100
LATE_MARK = "~"  # before an encoded event: dedup and count it, keep it out of the list
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
    served_ttl_s: int = 1800  # how long a served list waits for the next event
    # One server, no sharding proxy: a batch's users share append calls whatever
    # their slots (see the module docstring).
    cross_slot: bool = False


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
    accepted: int  # new events, late ones included
    duplicates: int
    accepted_skips: int
    late: int = 0  # of the accepted: logged, too late for the live session
    attributions: tuple[Attribution, ...] = ()  # served lists these events answered


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
        # Same-turn callers share a round trip (service.autopipeline); reads keep
        # their own pool so that they never wait behind a batch's append.
        self._writes = AutoPipeline(self.client)
        self._reads = AutoPipeline(self.read_client)

    async def drain(self) -> None:
        """Wait for the round trips already on their way (before closing)."""
        await self._writes.drain()
        await self._reads.drain()

    async def register(self) -> None:
        """Load the write scripts (on every primary when clustered)."""
        with store_errors():
            for script in (APPEND_SCRIPT, LOG_SCRIPT, *OUTCOME_SCRIPTS):
                await self.client.script_load(script)

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
                # A read still queued is left out of its round trip; a direct
                # one's connection is dropped by redis-py.
                task.cancel()
        raise redis_errors.TimeoutError(f"no reply within {timeout} s")

    async def append(
        self,
        events: Sequence[StoredEvent],
        now: float,
        late: Collection[int] = (),
        request_ids: Mapping[int, str] | None = None,
    ) -> AppendResult:
        """Store a batch (any users); returns only once Redis holds every event and
        has counted the served lists they answered.

        ``late``: positions of events too late for the live session; they are
        deduplicated and logged but never join a session (nor answer a list).
        ``request_ids``: position -> the served list an event names.
        """
        named = request_ids or {}
        calls: dict[int, dict[str, list[str]]] = {}
        call_of: dict[str, int] = {}  # user -> the call that carries their events
        for position, event in enumerate(events):
            if not event.event_id:
                raise ValueError("every stored event needs an id (service.ingest)")
            call = call_of.get(event.user_id)
            if call is None:
                call = call_of[event.user_id] = self._call_for(
                    event.user_id, len(call_of)
                )
            triples = calls.setdefault(call, {}).setdefault(event.user_id, [])
            encoded = event.encode()
            triples += (
                event.event_id,
                LATE_MARK + encoded if position in late else encoded,
                named.get(position, ""),
            )
        commands = [self._append_command(by_user, now) for by_user in calls.values()]
        commands.append(log_command(events, self.config.stream_maxlen))
        with store_errors():
            replies = await self._execute(commands)
            attributions = tuple(
                Attribution.decode(_text(text))
                for reply in replies[:-1]
                for text in reply[4:]
            )
            if attributions:
                remember_s = self.config.dedup_ttl_s
                await self._execute([count_command(attributions, now, remember_s)])
        accepted, duplicates, skips, late_count = (
            sum(int(reply[i]) for reply in replies[:-1]) for i in range(4)
        )
        return AppendResult(accepted, duplicates, skips, late_count, attributions)

    def _call_for(self, user_id: str, users_before: int) -> int:
        """Which append call carries a user's events: their hash slot's, or with
        ``cross_slot`` the chunk of the batch's distinct users they fall in."""
        if self.config.cross_slot:
            return users_before // APPEND_USERS_PER_CALL
        return key_slot(keys.session_events_key(user_id).encode())

    async def keep_served(self, served: ServedList) -> None:
        """Keep a list just served, for the user's next event (``service.outcomes``)."""
        with store_errors():
            await self._execute(keep_commands(served, self.config.served_ttl_s))

    async def outcome_counts(self) -> dict[tuple[str, str], ArmCounts]:
        """The experiment counters of every worker, per (variant, model version)."""
        with store_errors():
            raw = await self.client.hgetall(keys.OUTCOME_COUNTS_KEY)
        return parse_counts({_text(k): _text(v) for k, v in raw.items()})

    def _append_command(
        self, by_user: dict[str, list[str]], now: float
    ) -> tuple[Any, ...]:
        cfg = self.config
        script_keys: list[str] = []
        args: list[str | int] = [
            cfg.session_max_events,
            cfg.session_ttl_s,
            cfg.dedup_ttl_s,
            repr(now),
            cfg.served_ttl_s,
            keys.dedup_score(now),
            keys.dedup_score(now - cfg.dedup_ttl_s),
        ]
        for user_id, triples in by_user.items():
            if script_keys:
                args.append(USER_SEPARATOR)
            script_keys += (
                keys.session_events_key(user_id),
                keys.dedup_key(user_id),
                keys.served_key(user_id),
            )
            args += triples
        return ("EVALSHA", APPEND_SCRIPT_SHA, len(script_keys), *script_keys, *args)

    async def _execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``commands`` in one non-transactional pipeline (shared with the
        loop turn's other callers, ``service.autopipeline``); their replies.

        A command answered NOSCRIPT (a restarted or failed-over server lost its
        script cache) did not run: the scripts are loaded and only those commands
        are sent again, never the ones that ran (the log entry would be doubled).
        """
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        for attempt in range(2):
            answers = await self._writes.execute([commands[i] for i in pending])
            missing = []
            for index, answer in zip(pending, answers, strict=True):
                if isinstance(answer, redis_errors.NoScriptError):
                    missing.append(index)
                elif isinstance(answer, Exception):
                    raise answer
                else:
                    replies[index] = answer
            if not missing:
                return replies
            if attempt == 0:
                await self.register()
            pending = missing
        raise redis_errors.ConnectionError("scripts missing right after loading them")

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
            (reply,) = await self._within(
                self._reads.execute([("EVALSHA", READ_SCRIPT_SHA, 1, *args)])
            )
            if isinstance(reply, redis_errors.NoScriptError):
                # EVAL runs the script and caches it for the next EVALSHA.
                (reply,) = await self._within(
                    self._reads.execute([("EVAL", READ_SCRIPT, 1, *args)])
                )
            if isinstance(reply, Exception):
                raise reply
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
