"""``SkiprecClient`` and ``EventBuffer``: the blocking client (``httpx.Client``).

Every method builds its call in ``skiprec.client.core`` and drives the shared
retry loop with ``http.send`` and ``time.sleep``; ``async_client.py`` is the same
with ``await``.
"""

from __future__ import annotations

import logging
import threading
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


class SkiprecClient:
    """A blocking client of the skiprec HTTP API; use it as a context manager.

    Args:
        base_url: the service (default ``http://127.0.0.1:8000``, or
            ``http_client``'s base URL).
        api_key: sent as ``X-API-Key`` (the service's ``SKIPREC_API_KEY``).
        timeout: per request attempt (connect, read, write, pool).
        retry: how transport errors, 503 and 502/504 are retried (4xx never).
        max_batch_size: most events per ``POST /events`` (the service's
            ``SKIPREC_MAX_BATCH``); ``send_events`` splits longer lists.
        correct_clock_skew: stamp ``sent_at`` on every timestamped event at each
            attempt, so the service corrects this device's clock.
        transport: an httpx transport (a proxy, a mock, an ASGI app in tests).
        http_client: an ``httpx.Client`` to use instead of one of our own; it is
            not closed by ``close()``.
        limits: connection pool limits of our own ``httpx.Client``.
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
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
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
        self._http = http_client or httpx.Client(
            timeout=timeout, transport=transport, limits=limits or core.DEFAULT_LIMITS
        )

    def __enter__(self) -> SkiprecClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _run(self, call: core.Call[T]) -> T:
        steps = core.exchange(call, self.options.retry)
        action = next(steps)
        while True:
            outcome: core.Outcome = None
            if isinstance(action, core.Sleep):
                time.sleep(action.seconds)
            else:
                request = core.build_request(self._http, self.options, action)
                try:
                    outcome = self._http.send(request)
                except httpx.TransportError as exc:
                    outcome = exc
            try:
                action = steps.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result

    # --- events ---

    def send_event(self, event: Event) -> EventsAccepted:
        """Store one event (an id is assigned first when it has none)."""
        return self._run(core.event_call(event, self.options.correct_clock_skew))

    def send_events(self, events: Iterable[Event]) -> EventsAccepted:
        """Store events in batches of ``max_batch_size``, in order; the counts summed.

        Ids are assigned to every event before the first request, so retries are
        duplicates. On an error the earlier batches are stored; to resend safely,
        give the events ids first (``[e.with_id() for e in events]``).
        """
        calls = core.event_calls(
            events, self.options.max_batch_size, self.options.correct_clock_skew
        )
        return core.total(self._run(call) for call in calls)

    def event_buffer(
        self, max_events: int = 100, max_delay_s: float = 1.0
    ) -> EventBuffer:
        """A buffer that sends this client's events in batches (see ``EventBuffer``)."""
        return EventBuffer(self, max_events, max_delay_s)

    # --- recommendations ---

    def recommendations(
        self, user_id: str, k: int = 10, *, exclude_played: bool | None = None
    ) -> Recommendations:
        """The next ``k`` tracks for the user's live session, best first."""
        return self._run(core.recommendations_call(user_id, k, exclude_played))

    def rank(
        self,
        user_id: str,
        candidates: Iterable[str],
        *,
        exclude_played: bool | None = None,
    ) -> RankedCandidates:
        """``candidates`` (another system's tracks) ordered for the user's session."""
        return self._run(core.rank_call(user_id, candidates, exclude_played))

    # --- sessions ---

    def session(self, user_id: str) -> UserSession:
        """The user's current session, oldest event first."""
        return self._run(core.session_call(user_id))

    def delete_session(self, user_id: str) -> None:
        """Forget the user's session and its dedup state."""
        self._run(core.delete_session_call(user_id))

    # --- operations ---

    def health(self) -> Health:
        """``/healthz``: the process is alive; the body says what it reaches."""
        return self._run(core.health_call())

    def readiness(self) -> Health:
        """``/readyz``: ``.ready`` is False (not an error) while it can't serve."""
        return self._run(core.readiness_call())

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        return self._run(core.metrics_call())

    def reload(
        self, bundle_dir: str | None = None, *, variant: str | None = None
    ) -> ReloadResult:
        """Load the bundle again, or ``bundle_dir`` under the bundle root, for
        ``variant`` (required when the service serves several)."""
        return self._run(core.reload_call(bundle_dir, variant))

    def experiments(
        self, *, k: int | None = None, control: str | None = None
    ) -> dict[str, Any]:
        """``GET /admin/experiments`` as the service sends it: outcomes per variant
        (hit rate at ``k``, differences against the ``control`` variant)."""
        return self._run(core.experiments_call(k, control))


class EventBuffer:
    """Collects events and sends them in batches: as soon as ``max_events`` wait,
    when the oldest has waited ``max_delay_s``, on ``flush()`` and on ``close()``.

    ``add`` sends a full batch itself (back-pressure); a background thread sends the
    overdue ones. A batch that fails stays in the buffer with its ids and goes
    again with the next flush (its earlier part, if stored, then counts as
    duplicates); a failure in the background is logged and retried after another
    ``max_delay_s``, and ``flush``/``close`` raise theirs. Events still waiting
    after a failed ``close`` are in ``pending``. One batch is in flight at a time,
    so events are sent in the order they were added.
    """

    def __init__(
        self, client: SkiprecClient, max_events: int = 100, max_delay_s: float = 1.0
    ) -> None:
        self._client = client
        self._pending = core.PendingEvents(max_events, max_delay_s)
        self._state = threading.Condition()  # guards _pending, _closed, _sent
        self._sending = threading.Lock()  # one batch in flight
        self._closed = False
        self._sent = NO_EVENTS
        self._thread = threading.Thread(
            target=self._send_overdue, name="skiprec-event-buffer", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> EventBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        with self._state:
            return len(self._pending)

    @property
    def pending(self) -> tuple[Event, ...]:
        """The events not acknowledged yet (``len()`` of them), with their ids."""
        with self._state:
            return self._pending.snapshot()

    @property
    def sent(self) -> EventsAccepted:
        """The service's counts over every batch sent so far."""
        with self._state:
            return self._sent

    def add(self, event: Event) -> None:
        with self._state:
            if self._closed:
                raise RuntimeError("the event buffer is closed")
            full = self._pending.add(event, time.monotonic())
            self._state.notify()
        if full:
            self.flush()

    def flush(self) -> EventsAccepted:
        """Send every waiting event now; the counts of what this call sent."""
        with self._sending:
            with self._state:
                batch = self._pending.take()
            if not batch:
                return NO_EVENTS
            try:
                result = self._client.send_events(batch)
            except BaseException:
                with self._state:
                    self._pending.put_back(time.monotonic())
                raise
            with self._state:
                self._pending.sent()
                self._sent += result
            return result

    def close(self) -> None:
        """Stop the background thread and send what is left (raises if that fails)."""
        with self._state:
            self._closed = True
            self._state.notify_all()
        self._thread.join()
        self.flush()

    def _send_overdue(self) -> None:
        while True:
            with self._state:
                while not self._closed:
                    delay = self._pending.delay(time.monotonic())
                    if delay == 0.0:
                        break
                    self._state.wait(delay)  # None: until an event is added
                if self._closed:
                    return
            try:
                self.flush()
            except SkiprecError as exc:
                logger.warning(
                    "event buffer: %d events kept after a failed send: %s",
                    len(self),
                    exc,
                )
