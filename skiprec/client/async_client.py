"""``AsyncSkiprecClient`` and ``AsyncEventBuffer``: the asyncio client
(``httpx.AsyncClient``), the same calls as ``sync_client.py`` awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, TypeVar

import httpx

from skiprec.client import core
from skiprec.client.errors import SkiprecError
from skiprec.client.models import (
    NO_EVENTS,
    Event,
    EventsAccepted,
    Health,
    RankedCandidates,
    Recommendations,
    ReloadResult,
    UserSession,
)
from skiprec.client.retry import RetryPolicy

logger = logging.getLogger("skiprec.client")

T = TypeVar("T")


class AsyncSkiprecClient:
    """An asyncio client of the skiprec HTTP API; ``async with`` it.

    The arguments are ``SkiprecClient``'s, with an ``httpx.AsyncBaseTransport``
    (``httpx.ASGITransport(app)`` serves an app in-process) or an
    ``httpx.AsyncClient``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: httpx.Timeout | float = core.DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_batch_size: int = core.DEFAULT_MAX_BATCH,
        correct_clock_skew: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        if http_client is not None and (transport is not None or limits is not None):
            raise ValueError("give transport/limits or http_client, not both")
        self.options = core.ClientOptions(
            base_url=core.base_url_of(base_url, http_client),
            api_key=api_key,
            retry=retry or RetryPolicy(),
            max_batch_size=max_batch_size,
            correct_clock_skew=correct_clock_skew,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            limits=limits or core.DEFAULT_LIMITS,
        )

    async def __aenter__(self) -> AsyncSkiprecClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _run(self, call: core.Call[T]) -> T:
        steps = core.exchange(call, self.options.retry)
        action = next(steps)
        while True:
            outcome: core.Outcome = None
            if isinstance(action, core.Sleep):
                await asyncio.sleep(action.seconds)
            else:
                request = core.build_request(self._http, self.options, action)
                try:
                    outcome = await self._http.send(request)
                except httpx.TransportError as exc:
                    outcome = exc
            try:
                action = steps.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result

    # --- events ---

    async def send_event(self, event: Event) -> EventsAccepted:
        """Store one event (an id is assigned first when it has none)."""
        return await self._run(core.event_call(event, self.options.correct_clock_skew))

    async def send_events(self, events: Iterable[Event]) -> EventsAccepted:
        """Store events in batches of ``max_batch_size``, in order (see
        ``SkiprecClient.send_events``)."""
        calls = core.event_calls(
            events, self.options.max_batch_size, self.options.correct_clock_skew
        )
        return core.total([await self._run(call) for call in calls])

    def event_buffer(
        self, max_events: int = 100, max_delay_s: float = 1.0
    ) -> AsyncEventBuffer:
        """A buffer that sends this client's events in batches."""
        return AsyncEventBuffer(self, max_events, max_delay_s)

    # --- recommendations ---

    async def recommendations(
        self, user_id: str, k: int = 10, *, exclude_played: bool | None = None
    ) -> Recommendations:
        """The next ``k`` tracks for the user's live session, best first."""
        return await self._run(core.recommendations_call(user_id, k, exclude_played))

    async def rank(
        self,
        user_id: str,
        candidates: Iterable[str],
        *,
        exclude_played: bool | None = None,
    ) -> RankedCandidates:
        """``candidates`` (another system's tracks) ordered for the user's session."""
        return await self._run(core.rank_call(user_id, candidates, exclude_played))

    # --- sessions ---

    async def session(self, user_id: str) -> UserSession:
        """The user's current session, oldest event first."""
        return await self._run(core.session_call(user_id))

    async def delete_session(self, user_id: str) -> None:
        """Forget the user's session and its dedup state."""
        await self._run(core.delete_session_call(user_id))

    # --- operations ---

    async def health(self) -> Health:
        """``/healthz``: the process is alive; the body says what it reaches."""
        return await self._run(core.health_call())

    async def readiness(self) -> Health:
        """``/readyz``: ``.ready`` is False (not an error) while it can't serve."""
        return await self._run(core.readiness_call())

    async def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        return await self._run(core.metrics_call())

    async def reload(
        self, bundle_dir: str | None = None, *, variant: str | None = None
    ) -> ReloadResult:
        """Load the bundle again, or ``bundle_dir`` under the bundle root, for
        ``variant`` (required when the service serves several)."""
        return await self._run(core.reload_call(bundle_dir, variant))

    async def experiments(
        self, *, k: int | None = None, control: str | None = None
    ) -> dict[str, Any]:
        """``GET /admin/experiments`` as the service sends it: outcomes per variant
        (hit rate at ``k``, differences against the ``control`` variant)."""
        return await self._run(core.experiments_call(k, control))


class AsyncEventBuffer:
    """``EventBuffer`` for asyncio: the overdue batches are sent by a task on the
    loop (started with the first event), the full ones by ``await add()``."""

    def __init__(
        self,
        client: AsyncSkiprecClient,
        max_events: int = 100,
        max_delay_s: float = 1.0,
    ) -> None:
        self._client = client
        self._pending = core.PendingEvents(max_events, max_delay_s)
        self._sending = asyncio.Lock()  # one batch in flight
        self._added = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._sent = NO_EVENTS

    async def __aenter__(self) -> AsyncEventBuffer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def pending(self) -> tuple[Event, ...]:
        """The events not acknowledged yet (``len()`` of them), with their ids."""
        return self._pending.snapshot()

    @property
    def sent(self) -> EventsAccepted:
        """The service's counts over every batch sent so far."""
        return self._sent

    async def add(self, event: Event) -> None:
        if self._closed:
            raise RuntimeError("the event buffer is closed")
        full = self._pending.add(event, time.monotonic())
        if self._task is None:
            self._task = asyncio.create_task(self._send_overdue())
        self._added.set()
        if full:
            await self.flush()

    async def flush(self) -> EventsAccepted:
        """Send every waiting event now; the counts of what this call sent."""
        async with self._sending:
            batch = self._pending.take()
            if not batch:
                return NO_EVENTS
            try:
                result = await self._client.send_events(batch)
            except BaseException:  # cancelled too: the events must not be lost
                self._pending.put_back(time.monotonic())
                raise
            self._pending.sent()
            self._sent += result
            return result

    async def close(self) -> None:
        """Stop the background task and send what is left (raises if that fails)."""
        self._closed = True
        if self._task is not None:
            self._added.set()  # the task ends after the batch it may be sending
            await self._task
            self._task = None
        await self.flush()

    async def _send_overdue(self) -> None:
        while not self._closed:
            delay = self._pending.delay(time.monotonic())
            if delay is None or delay > 0:
                self._added.clear()  # no await since the delay was read: no lost wake
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._added.wait(), delay)
                continue
            try:
                await self.flush()
            except SkiprecError as exc:
                logger.warning(
                    "event buffer: %d events kept after a failed send: %s",
                    len(self),
                    exc,
                )
