"""The one implementation behind both clients: requests built, retried, parsed.

Sans-I/O (the h11/httpcore idea): :func:`exchange` is a generator that yields what
to do next, ``Send`` a request or ``Sleep`` before a retry, and is sent back what
happened (the ``httpx.Response``, or the ``httpx.TransportError`` the send raised).
It owns the retry loop, the error mapping and the parsing; ``SkiprecClient`` and
``AsyncSkiprecClient`` drive it with ``http.send``/``time.sleep`` and with their
awaited twins, and that is all that differs between them. Every route is a
:class:`Call` built by a function here, so both clients send identical requests.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from skiprec.client.errors import (
    APIError,
    ProtocolError,
    TransportError,
    error_from_response,
)
from skiprec.client.models import (
    NO_EVENTS,
    Event,
    EventsAccepted,
    Health,
    RankedCandidates,
    Recommendations,
    ReloadResult,
    UserSession,
    parse_events_accepted,
    parse_health,
    parse_object,
    parse_ranked_candidates,
    parse_recommendations,
    parse_reload_result,
    parse_user_session,
    parsing,
)
from skiprec.client.retry import (
    RETRY_STATUSES,
    RetryPolicy,
    parse_retry_after,
    retry_delay,
    transport_error_is_retryable,
)

logger = logging.getLogger("skiprec.client")

T = TypeVar("T")
VERSION = "0.1.0"
DEFAULT_BASE_URL = (
    "http://127.0.0.1:8000"  # where `skiprec serve` and `make demo` listen
)
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=2.0)
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
RELOAD_TIMEOUT = httpx.Timeout(120.0, connect=2.0)  # loading a bundle takes seconds
DEFAULT_MAX_BATCH = 1000  # the service's default SKIPREC_MAX_BATCH
API_KEY_HEADER = "X-API-Key"
EVENT_INDEX = re.compile(r"^events\[(\d+)\]")


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What both clients are configured with, besides their HTTP connection."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_batch_size: int = DEFAULT_MAX_BATCH
    correct_clock_skew: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size: at least 1")

    def headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "User-Agent": f"skiprec-python/{VERSION}",
        }
        if self.api_key:  # "" (an unset variable) is no key, not a wrong one
            headers[API_KEY_HEADER] = self.api_key
        return headers

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


def base_url_of(
    base_url: str | None, http_client: httpx.Client | httpx.AsyncClient | None
) -> str:
    """The given base URL, else the given httpx client's, else the default."""
    if base_url is not None:
        return base_url
    if http_client is not None and str(http_client.base_url):
        return str(http_client.base_url)
    return DEFAULT_BASE_URL


# --- what the generator asks for ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    method: str
    path: str
    params: Mapping[str, str | int] | None
    json: Any  # None: no body
    timeout: httpx.Timeout | None  # None: the client's


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Action = Send | Sleep
Outcome = httpx.Response | httpx.TransportError | None  # None after a Sleep


def build_request(
    http: httpx.Client | httpx.AsyncClient, options: ClientOptions, send: Send
) -> httpx.Request:
    """``send`` as an httpx request (``build_request`` is the same on both clients)."""
    return http.build_request(
        send.method,
        options.url(send.path),
        params=send.params,
        json=send.json,
        headers=options.headers(),
        timeout=send.timeout if send.timeout is not None else httpx.USE_CLIENT_DEFAULT,
    )


# --- one route ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API call: how to build its request and read its answer.

    ``body`` is called at each attempt with the current unix time (``sent_at`` is
    the client's clock when *this* attempt is sent). ``answers`` are the statuses
    whose body is the result (``/readyz``'s 503 is an answer, not an error).
    ``field_offset`` shifts ``events[i]`` in an error's field and message by the
    position of this request's first event in the caller's list.
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, str | int] | None = None
    body: Callable[[float], Any] | None = None
    idempotent: bool = True
    answers: frozenset[int] = frozenset({200})
    timeout: httpx.Timeout | None = None
    field_offset: int = 0

    def send(self, now: float) -> Send:
        body = None if self.body is None else self.body(now)
        return Send(self.method, self.path, self.params, body, self.timeout)

    def describe(self) -> str:
        return f"{self.method} {self.path}"


def exchange(
    call: Call[T],
    policy: RetryPolicy,
    random_fraction: Callable[[], float] = random.random,
) -> Generator[Action, Outcome, T]:
    """``call``'s result, retried under ``policy``; raises ``SkiprecError``."""
    started = time.monotonic()
    failures = 0
    while True:
        outcome = yield call.send(time.time())
        if isinstance(outcome, httpx.Response) and outcome.status_code in call.answers:
            return call.parse(outcome)
        failures += 1
        error, retryable, retry_after = _failure(call, outcome)
        delay = None
        if retryable:
            elapsed = time.monotonic() - started
            delay = retry_delay(
                policy, failures, elapsed, retry_after, random_fraction()
            )
        if delay is None:
            if isinstance(outcome, httpx.TransportError):
                raise error from outcome
            raise error
        logger.info(
            "%s: %s; attempt %d of %d in %.2f s",
            call.describe(),
            error,
            failures + 1,
            policy.max_attempts,
            delay,
        )
        yield Sleep(delay)


def _failure(call: Call[Any], outcome: Outcome) -> tuple[Exception, bool, float | None]:
    """``(the error to raise, whether to retry, Retry-After)`` of a failed attempt."""
    if isinstance(outcome, httpx.TransportError):
        error = TransportError(
            f"{call.describe()}: {type(outcome).__name__}: {outcome or 'no detail'}"
        )
        return error, transport_error_is_retryable(outcome, call.idempotent), None
    assert isinstance(outcome, httpx.Response), "a Send is answered by its outcome"
    status = outcome.status_code
    if status < 400:
        message = f"{call.describe()}: unexpected status {status}"
        return ProtocolError(message), False, None
    retry_after = parse_retry_after(outcome.headers.get("Retry-After"))
    api_error = error_from_response(outcome, retry_after)
    if call.field_offset:
        api_error = _shift_event_index(api_error, call.field_offset)
    return api_error, status in RETRY_STATUSES, retry_after


def _shift_event_index(error: APIError, offset: int) -> APIError:
    """``events[3]`` -> ``events[3 + offset]`` in the field and the message."""

    def shift(text: str) -> str:
        return EVENT_INDEX.sub(lambda m: f"events[{int(m.group(1)) + offset}]", text)

    if error.field is None or not EVENT_INDEX.match(error.field):
        return error
    return type(error)(
        shift(error.message),
        status_code=error.status_code,
        code=error.code,
        field=shift(error.field),
        retry_after=error.retry_after,
    )


# --- answers -----------------------------------------------------------------------


def json_answer(what: str, parse: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    """Decode a JSON answer and parse it; either failing is a ``ProtocolError``."""
    checked = parsing(what, parse)

    def read(response: httpx.Response) -> T:
        try:
            body = response.json()
        except ValueError as exc:
            raise ProtocolError(f"{what}: answer is not JSON ({exc})") from exc
        return checked(body)

    return read


def _no_answer(response: httpx.Response) -> None:
    return None


def _text_answer(response: httpx.Response) -> str:
    return response.text


# --- the routes --------------------------------------------------------------------


def _user_path(template: str, user_id: str) -> str:
    return template.format(user=quote(user_id, safe=""))


def _exclude_played(value: bool | None) -> dict[str, str]:
    return {} if value is None else {"exclude_played": "true" if value else "false"}


def event_call(event: Event, stamp_sent_at: bool) -> Call[EventsAccepted]:
    """``POST /events`` with one event object (errors name its bare field)."""
    return _events_call([event.with_id()], stamp_sent_at, batch=False, offset=0)


def event_calls(
    events: Iterable[Event], max_batch_size: int, stamp_sent_at: bool
) -> list[Call[EventsAccepted]]:
    """``POST /events`` batches of at most ``max_batch_size``, ids assigned first.

    Every event gets its id here, before any request is sent, so a retry of any
    batch repeats the same ids and the service counts it as a duplicate.
    """
    with_ids = [event.with_id() for event in events]
    return [
        _events_call(
            with_ids[start : start + max_batch_size], stamp_sent_at, True, start
        )
        for start in range(0, len(with_ids), max_batch_size)
    ]


def _events_call(
    events: Sequence[Event], stamp_sent_at: bool, batch: bool, offset: int
) -> Call[EventsAccepted]:
    def body(now: float) -> Any:
        wire = [_wire_event(event, now if stamp_sent_at else None) for event in events]
        return {"events": wire} if batch else wire[0]

    return Call(
        "POST",
        "/events",
        json_answer("POST /events", parse_events_accepted),
        body=body,
        answers=frozenset({202}),
        field_offset=offset,
    )


def _wire_event(event: Event, now: float | None) -> dict[str, Any]:
    """An event's JSON; ``sent_at`` = ``now`` when stamping and it has a timestamp
    (without one the service uses its receive time, and there is nothing to shift)."""
    stamp = now is not None and event.timestamp is not None and event.sent_at is None
    return event.to_json(sent_at=now if stamp else None)


def total(results: Iterable[EventsAccepted]) -> EventsAccepted:
    return sum(results, NO_EVENTS)


def recommendations_call(
    user_id: str, k: int, exclude_played: bool | None
) -> Call[Recommendations]:
    return Call(
        "GET",
        _user_path("/recommendations/{user}", user_id),
        json_answer("GET /recommendations", parse_recommendations),
        params={"k": k, **_exclude_played(exclude_played)},
    )


def rank_call(
    user_id: str, candidates: Iterable[str], exclude_played: bool | None
) -> Call[RankedCandidates]:
    body: dict[str, Any] = {"candidates": list(candidates)}
    if exclude_played is not None:
        body["exclude_played"] = exclude_played
    return Call(
        "POST",
        _user_path("/recommendations/{user}/rank", user_id),
        json_answer("POST /recommendations/rank", parse_ranked_candidates),
        body=lambda now: body,
    )


def session_call(user_id: str) -> Call[UserSession]:
    return Call(
        "GET",
        _user_path("/users/{user}/session", user_id),
        json_answer("GET /users/session", parse_user_session),
    )


def delete_session_call(user_id: str) -> Call[None]:
    return Call(
        "DELETE",
        _user_path("/users/{user}/session", user_id),
        _no_answer,
        answers=frozenset({204}),
    )


def health_call() -> Call[Health]:
    return Call("GET", "/healthz", json_answer("GET /healthz", parse_health))


def readiness_call() -> Call[Health]:
    """``/readyz``: a 503 carries the same body and is the answer "not ready"."""
    return Call(
        "GET",
        "/readyz",
        json_answer("GET /readyz", parse_health),
        answers=frozenset({200, 503}),
    )


def metrics_call() -> Call[str]:
    return Call("GET", "/metrics", _text_answer)


def reload_call(bundle_dir: str | None, variant: str | None) -> Call[ReloadResult]:
    body = {
        name: value
        for name, value in (("bundle_dir", bundle_dir), ("variant", variant))
        if value is not None
    }
    return Call(
        "POST",
        "/admin/reload",
        json_answer("POST /admin/reload", parse_reload_result),
        body=lambda now: body,
        idempotent=False,  # a timed-out reload may still be running
        timeout=RELOAD_TIMEOUT,
    )


def experiments_call(k: int | None, control: str | None) -> Call[dict[str, Any]]:
    params: dict[str, str | int] = {}
    if k is not None:
        params["k"] = k
    if control is not None:
        params["control"] = control
    return Call(
        "GET",
        "/admin/experiments",
        json_answer("GET /admin/experiments", parse_object),
        params=params,
    )


# --- the event buffers' shared state -----------------------------------------------


class PendingEvents:
    """Events not acknowledged yet: waiting, or in the batch in flight.

    Not thread-safe by itself: the sync buffer guards it with a lock, the async one
    runs on one event loop. Events get their ids on ``add``, so a batch that fails
    and is put back keeps them for the next attempt.
    """

    def __init__(self, max_events: int, max_delay_s: float) -> None:
        if max_events < 1 or max_delay_s <= 0:
            raise ValueError("max_events: at least 1; max_delay_s: more than 0")
        self.max_events = max_events
        self.max_delay_s = max_delay_s
        self._waiting: list[Event] = []
        self._in_flight: list[Event] = []
        self._since: float | None = None  # monotonic time the oldest waiting came

    def __len__(self) -> int:
        return len(self._in_flight) + len(self._waiting)

    def snapshot(self) -> tuple[Event, ...]:
        """Every event not acknowledged, oldest first, with its id."""
        return (*self._in_flight, *self._waiting)

    def add(self, event: Event, now: float) -> bool:
        """Queue ``event``; True when the buffer is full (flush now)."""
        self._waiting.append(event.with_id())
        if self._since is None:
            self._since = now
        return len(self._waiting) >= self.max_events

    def take(self) -> list[Event]:
        """The waiting events, now in flight until ``sent`` or ``put_back``."""
        self._in_flight, self._waiting, self._since = self._waiting, [], None
        return self._in_flight

    def sent(self) -> None:
        self._in_flight = []

    def put_back(self, now: float) -> None:
        """Return the batch in flight, which failed, ahead of newer events; its wait
        starts over (a down service is not hammered by an overdue buffer)."""
        self._waiting[:0] = self._in_flight
        self._in_flight = []
        if self._waiting:
            self._since = now

    def delay(self, now: float) -> float | None:
        """Seconds until the oldest waiting event is due (0: now), None for none."""
        if self._since is None:
            return None
        return max(0.0, self._since + self.max_delay_s - now)
