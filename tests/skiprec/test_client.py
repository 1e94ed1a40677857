"""skiprec.client against the real service: uvicorn in its own process, real Redis.

Faults are real too: a transport that hands the request to the server and then
loses its reply (the server stored the events; the client cannot know), a Redis
that refuses writes (``maxmemory``: the service answers 503 + ``Retry-After``), a
port nobody listens on. The backoff arithmetic is tested as the pure function it is.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from benchmarks import processes
from skiprec.client import (
    NO_RETRIES,
    AsyncSkiprecClient,
    AuthenticationError,
    Event,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RetryPolicy,
    ServerError,
    SkiprecClient,
    TransportError,
    UnavailableError,
)
from skiprec.client.core import (
    Action,
    Call,
    Outcome,
    PendingEvents,
    Send,
    Sleep,
    event_calls,
    exchange,
    health_call,
)
from skiprec.client.retry import backoff_s, parse_retry_after, retry_delay
from tests.service.conftest import redis_server  # noqa: F401  (a fixture)

T = TypeVar("T")
API_KEY = "client-test-key"
MAX_BATCH = 5  # the server's SKIPREC_MAX_BATCH here, so splitting shows at once
OPTIONS: dict[str, Any] = {"api_key": API_KEY, "max_batch_size": MAX_BATCH}
FAST = RetryPolicy(max_attempts=4, base_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture(scope="module")
def api(
    tiny_bundle_dir: Path,
    redis_server: str,  # noqa: F811  (the fixture imported above)
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("client_api") / "api.log"
    with processes.api_server(
        tiny_bundle_dir,
        redis_server,
        log,
        ready_path="/readyz",
        api_key=API_KEY,
        max_batch=str(MAX_BATCH),
        redis_timeout_s="1.0",  # a busy machine must not turn answers into fallbacks
    ) as server:
        yield server.base_url


@pytest.fixture
def client(api: str) -> Iterator[SkiprecClient]:
    with SkiprecClient(api, **OPTIONS, retry=FAST) as c:
        yield c


@pytest.fixture
def user() -> str:
    """A user id of this test alone (the Redis server is shared by the module)."""
    return f"u-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def full_redis(redis_server: str) -> Iterator[redis.Redis]:  # noqa: F811
    """Redis with ``maxmemory`` below its use: every write is refused (OOM -> 503)."""
    r = redis.Redis.from_url(redis_server)
    before = r.config_get("maxmemory*")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        yield r
    finally:
        restore(r, before)
        r.close()


def restore(r: redis.Redis, before: dict[Any, Any]) -> None:
    r.config_set("maxmemory", before["maxmemory"])
    r.config_set("maxmemory-policy", before["maxmemory-policy"])


class LoseReplies(httpx.BaseTransport):
    """Forwards every request to the server; the first ``lose`` replies to requests
    on ``path`` are dropped and ``error`` is raised instead (the server acted)."""

    def __init__(
        self, lose: int = 0, path: str = "/events", error: type = httpx.ReadError
    ):
        self.inner = httpx.HTTPTransport()
        self.lose, self.path, self.error = lose, path, error
        self.requests: list[httpx.Request] = []
        self.statuses: list[int] = []

    def bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if r.url.path == self.path]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        response.read()
        self.statuses.append(response.status_code)
        if request.url.path == self.path and self.lose > 0:
            self.lose -= 1
            response.close()
            raise self.error("reply lost on its way back", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncLoseReplies(httpx.AsyncBaseTransport):
    """``LoseReplies`` for the async client."""

    def __init__(
        self, lose: int = 0, path: str = "/events", error: type = httpx.ReadError
    ):
        self.inner = httpx.AsyncHTTPTransport()
        self.lose, self.path, self.error = lose, path, error
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if request.url.path == self.path and self.lose > 0:
            self.lose -= 1
            await response.aclose()
            raise self.error("reply lost on its way back", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- backoff: pure functions ---------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_and_jitter_only_shortens_it():
    policy = RetryPolicy(base_backoff_s=0.1, max_backoff_s=1.0, jitter=0.25)
    assert [backoff_s(policy, n, 0.0) for n in (1, 2, 3, 4, 5, 200)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    )
    assert backoff_s(policy, 2, 0.999) == pytest.approx(0.2 * (1 - 0.25 * 0.999))
    assert backoff_s(RetryPolicy(jitter=0.0), 3, 0.9) == backoff_s(
        RetryPolicy(jitter=0.0), 3, 0.0
    )


def test_retry_delay_honours_retry_after_as_a_floor():
    policy = RetryPolicy(base_backoff_s=0.1, max_backoff_s=1.0, max_total_s=30.0)
    assert retry_delay(policy, 1, 0.0, 2.5, 0.0) == 2.5
    assert retry_delay(policy, 3, 0.0, 0.1, 0.0) == pytest.approx(0.4)  # backoff wins


def test_retry_delay_gives_up_after_the_attempts_or_the_total_time():
    policy = RetryPolicy(max_attempts=3, base_backoff_s=0.1, max_total_s=1.0)
    assert retry_delay(policy, 2, 0.0, None, 0.0) is not None
    assert retry_delay(policy, 3, 0.0, None, 0.0) is None  # three attempts made
    assert retry_delay(policy, 1, 0.95, None, 0.0) is None  # would end past 1 s
    assert retry_delay(policy, 1, 0.0, 5.0, 0.0) is None  # Retry-After beyond it
    assert retry_delay(NO_RETRIES, 1, 0.0, None, 0.0) is None


def test_retry_after_is_read_as_seconds_or_an_http_date():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = now + timedelta(seconds=7)
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"), now) == 7.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_ids_are_assigned_before_the_first_request_and_sent_at_per_attempt():
    events = [Event("u", "t1", "play", timestamp=100.0), Event("u", "t2", "skip")]
    (call,) = event_calls(events, max_batch_size=10, stamp_sent_at=True)
    first, second = call.send(200.0).json, call.send(205.0).json
    ids = [e["event_id"] for e in first["events"]]
    assert all(ids) and ids == [e["event_id"] for e in second["events"]]
    assert [e.get("sent_at") for e in first["events"]] == [200.0, None]  # no timestamp
    assert second["events"][0]["sent_at"] == 205.0
    assert events[0].event_id is None  # the caller's events are left as they were


def drive(call: Call[T], *outcomes: Outcome) -> tuple[list[Action], T]:
    """Run ``exchange`` on scripted outcomes; the actions it took, and its result."""
    steps = exchange(call, FAST, random_fraction=lambda: 0.0)
    actions = [next(steps)]
    for outcome in outcomes:
        try:
            actions.append(
                steps.send(outcome if isinstance(actions[-1], Send) else None)
            )
            if isinstance(actions[-1], Sleep):
                actions.append(steps.send(None))
        except StopIteration as done:
            return actions, done.value
    raise AssertionError(f"still running after {len(outcomes)} outcomes: {actions}")


HEALTH = {"status": "ok", "model_version": "v1", "redis": "ok", "inference": "ok"}


def test_a_gateway_error_is_retried_and_a_server_error_is_not():
    gateway = httpx.Response(502, text="<html>Bad Gateway</html>")
    actions, health = drive(health_call(), gateway, httpx.Response(200, json=HEALTH))
    assert [type(a) for a in actions] == [Send, Sleep, Send] and health.model_version
    with pytest.raises(ServerError) as raised:
        drive(health_call(), httpx.Response(500, text="oops"))
    assert raised.value.code == "http_500" and "oops" in raised.value.message
    with pytest.raises(ServerError) as raised:
        drive(health_call(), *[gateway] * FAST.max_attempts)
    assert raised.value.status_code == 502 and "Bad Gateway" in raised.value.message


def test_an_answer_without_its_fields_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        drive(health_call(), httpx.Response(200, json={"status": "ok"}))
    with pytest.raises(ProtocolError):
        drive(health_call(), httpx.Response(200, text="<html>login</html>"))


def test_pending_events_keep_order_and_restart_the_wait_after_a_failure():
    pending = PendingEvents(max_events=3, max_delay_s=1.0)
    assert pending.delay(0.0) is None
    assert not pending.add(Event("u", "t1", "play"), now=10.0)
    assert pending.delay(10.4) == pytest.approx(0.6)
    batch = pending.take()
    pending.add(Event("u", "t2", "play"), now=10.5)
    assert len(pending) == 2  # one in flight, one waiting
    pending.put_back(now=20.0)  # the send failed
    assert [e.track_id for e in pending.snapshot()] == ["t1", "t2"]
    assert pending.snapshot()[0].event_id == batch[0].event_id
    assert pending.delay(20.0) == 1.0


# --- every route, sync and async -----------------------------------------------------


def test_every_route_answers_with_typed_results(client, user):
    assert client.health().status == "ok"
    ready = client.readiness()
    assert ready.ready and ready.model_version and ready.redis == "ok"
    assert client.recommendations(user, k=3).fallback_reason == "cold-start"

    one = client.send_event(Event(user, "t1", "play", skip_level=3))
    assert (one.accepted, one.duplicates, one.late) == (1, 0, 0)
    more = client.send_events(
        [Event(user, "t2", "skip", played_ms=1000, duration_ms=200_000)]
        + [Event(user, f"t{i}", "play") for i in range(3, 9)]
    )
    assert (more.accepted, more.duplicates) == (7, 0)  # two requests (batch of 5)

    answer = client.recommendations(user, k=4, exclude_played=True)
    assert answer.user_id == user and not answer.fallback
    assert answer.fallback_reason == "none" and len(answer.items) == 4
    assert answer.model_version == ready.model_version
    assert not set(answer.track_ids) & {f"t{i}" for i in range(1, 9)}
    assert all(isinstance(i.score, float) for i in answer.items)
    assert answer.request_id and answer.variant == "default"

    ranked = client.rank(user, ["t20", "t30", "not-a-track", "t1"], exclude_played=True)
    assert {i.track_id for i in ranked.items} == {"t20", "t30"}
    assert ranked.variant == "default"
    assert {(u.track_id, u.reason) for u in ranked.unranked} == {
        ("not-a-track", "unknown"),
        ("t1", "excluded"),
    }

    session = client.session(user)
    assert [e.track_id for e in session.events] == [f"t{i}" for i in range(1, 9)]
    assert session.events[1].type == "skip" and session.events[1].skip_level == 0
    assert session.skip_rate == pytest.approx(1 / 8)

    assert "skiprec_" in client.metrics()
    reloaded = client.reload()
    assert reloaded.model_version == reloaded.previous_version == ready.model_version
    assert reloaded.variant == "default"

    client.delete_session(user)
    assert client.session(user).events == ()


async def test_every_route_answers_with_typed_results_async(api, user):
    async with AsyncSkiprecClient(api, **OPTIONS, retry=FAST) as client:
        assert (await client.health()).status == "ok"
        ready = await client.readiness()
        assert ready.ready
        one = await client.send_event(Event(user, "t1", "play"))
        assert one.accepted == 1
        more = await client.send_events(
            [Event(user, f"t{i}", "skip") for i in range(2, 9)]
        )
        assert more.accepted == 7
        answer = await client.recommendations(user, k=4)
        assert not answer.fallback and len(answer.items) == 4
        ranked = await client.rank(user, ["t20", "t30"])
        assert {i.track_id for i in ranked.items} == {"t20", "t30"}
        session = await client.session(user)
        assert len(session.events) == 8 and session.skip_rate == pytest.approx(7 / 8)
        assert "skiprec_" in await client.metrics()
        reloaded = await client.reload()
        assert reloaded.model_version == ready.model_version
        await client.delete_session(user)
        assert (await client.session(user)).events == ()


def test_an_event_names_the_list_it_answers_and_experiments_count_it(client, user):
    client.send_event(Event(user, "t1", "play"))
    answer = client.recommendations(user, k=10)
    heard = answer.items[0].track_id
    sent = client.send_event(Event(user, heard, "play", request_id=answer.request_id))
    assert sent.accepted == 1
    summary = client.experiments(k=10, control="default")
    assert summary["k"] == 10 and summary["control"] == "default"
    arm = next(a for a in summary["arms"] if a["variant"] == "default")
    assert arm["served"] >= 1 and arm["rates"]["hit"]["successes"] >= 1


# --- errors name the field -----------------------------------------------------------


def test_a_bad_k_is_an_invalid_request_naming_the_field(client, user):
    with pytest.raises(InvalidRequestError) as raised:
        client.recommendations(user, k=0)
    error = raised.value
    assert error.status_code == 422 and error.code == "invalid_request"
    assert error.field == "query.k" and error.message.startswith("query.k")


def test_a_bad_track_id_names_its_field_in_the_callers_list(api, user):
    transport = LoseReplies()
    with SkiprecClient(api, **OPTIONS, transport=transport) as client:
        with pytest.raises(InvalidRequestError) as single:
            client.send_event(Event(user, "not a track id", "play"))
        assert single.value.field == "track_id"
        events = [Event(user, f"t{i}", "play") for i in range(9)]
        events[7] = Event(user, "bad id!", "play")
        with pytest.raises(InvalidRequestError) as batch:
            client.send_events(events)
    # The second request (events 5..9) failed at its [2]: reported as the caller's [7].
    assert batch.value.field == "events[7].track_id"
    assert batch.value.message.startswith("events[7].track_id")
    assert len(transport.bodies()) == 3  # 4xx never retried
    assert len(transport.bodies()[1]["events"]) == MAX_BATCH


def test_more_events_than_the_server_takes_is_refused_naming_the_field(api, user):
    with SkiprecClient(api, api_key=API_KEY, max_batch_size=MAX_BATCH + 1) as client:
        with pytest.raises(InvalidRequestError) as raised:
            client.send_events([Event(user, "t1", "play")] * (MAX_BATCH + 1))
    assert raised.value.field == "events"


def test_a_missing_or_wrong_api_key_is_an_authentication_error(api, user):
    for key in (None, "wrong"):
        with SkiprecClient(api, api_key=key) as client:
            with pytest.raises(AuthenticationError) as raised:
                client.recommendations(user)
            assert raised.value.status_code == 401 and raised.value.field == "X-API-Key"
            assert client.health().status == "ok"  # the probes stay open


def test_a_wrong_base_path_is_not_found(api):
    with SkiprecClient(api + "/v9", **OPTIONS) as client:
        with pytest.raises(NotFoundError) as raised:
            client.session("anyone")
    assert raised.value.status_code == 404


# --- retries never double an event ---------------------------------------------------


@pytest.mark.parametrize("error", [httpx.ReadError, httpx.ReadTimeout])
def test_a_lost_reply_is_retried_and_counted_as_a_duplicate(api, user, error):
    transport = LoseReplies(lose=1, error=error)
    with SkiprecClient(api, **OPTIONS, retry=FAST, transport=transport) as c:
        result = c.send_event(Event(user, "t1", "play"))
        session = c.session(user)
    assert transport.statuses[:2] == [202, 202]  # stored, then recognised
    assert (result.accepted, result.duplicates) == (0, 1)
    first, retry = transport.bodies()
    assert first["event_id"] == retry["event_id"] == session.events[0].event_id
    assert [e.track_id for e in session.events] == ["t1"]


def test_a_lost_reply_of_one_batch_of_many_doubles_nothing(api, user):
    transport = LoseReplies(lose=2)  # the first batch's reply twice
    events = [Event(user, f"t{i}", "skip") for i in range(8)]
    with SkiprecClient(api, **OPTIONS, retry=FAST, transport=transport) as c:
        result = c.send_events(events)
        session = c.session(user)
    assert (result.accepted, result.duplicates) == (3, 5)  # 5 stored unseen, then 3
    bodies = transport.bodies()
    assert len(bodies) == 4 and bodies[0] == bodies[1] == bodies[2]
    assert [e.track_id for e in session.events] == [f"t{i}" for i in range(8)]
    assert len({e.event_id for e in session.events}) == 8


async def test_a_lost_reply_is_a_duplicate_for_the_async_client_too(api, user):
    transport = AsyncLoseReplies(lose=1)
    async with AsyncSkiprecClient(
        api, **OPTIONS, retry=FAST, transport=transport
    ) as client:
        result = await client.send_events([Event(user, "t1", "play")])
        session = await client.session(user)
    assert (result.accepted, result.duplicates) == (0, 1)
    assert len(session.events) == 1


def test_a_reload_whose_reply_is_lost_is_not_sent_again(api):
    transport = LoseReplies(lose=1, path="/admin/reload")
    with SkiprecClient(api, **OPTIONS, retry=FAST, transport=transport) as c:
        with pytest.raises(TransportError) as raised:
            c.reload()
    assert isinstance(raised.value.__cause__, httpx.ReadError)
    assert len(transport.requests) == 1


def test_a_refused_connection_is_retried_then_a_transport_error():
    transport = LoseReplies()
    url = f"http://127.0.0.1:{processes.free_port()}"
    with SkiprecClient(url, retry=FAST, transport=transport) as client:
        with pytest.raises(TransportError) as raised:
            client.send_event(Event("u", "t1", "play"))
    assert isinstance(raised.value.__cause__, httpx.ConnectError)
    assert len(transport.requests) == FAST.max_attempts


def test_503_is_retried_after_retry_after_then_unavailable(api, user, full_redis):
    transport = LoseReplies()
    policy = RetryPolicy(max_attempts=2, base_backoff_s=0.01)
    started = time.monotonic()
    with SkiprecClient(api, **OPTIONS, retry=policy, transport=transport) as c:
        with pytest.raises(UnavailableError) as raised:
            c.send_event(Event(user, "t1", "play"))
    assert time.monotonic() - started >= 1.0  # the service's Retry-After: 1
    assert transport.statuses == [503, 503]
    error = raised.value
    assert error.retry_after == 1.0 and error.code == "session_store_unavailable"


def test_503_then_recovery_stores_the_event_once(api, user, full_redis):
    before = {"maxmemory": "0", "maxmemory-policy": "noeviction"}

    class RecoverAfterRefusal(LoseReplies):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if response.status_code == 503:
                restore(full_redis, before)  # Redis has room again for the retry
            return response

    transport = RecoverAfterRefusal()
    with SkiprecClient(api, **OPTIONS, retry=FAST, transport=transport) as c:
        result = c.send_event(Event(user, "t1", "play"))
        session = c.session(user)
    assert transport.statuses[:2] == [503, 202]
    assert (result.accepted, result.duplicates) == (1, 0)
    assert len(session.events) == 1


# --- batching ------------------------------------------------------------------------


def test_the_event_buffer_flushes_when_full_and_on_close(client, user):
    with client.event_buffer(max_events=3, max_delay_s=60) as buffer:
        for i in range(4):
            buffer.add(Event(user, f"t{i}", "play"))
        assert len(buffer) == 1 and buffer.sent.accepted == 3
        waiting = buffer.pending[0]
        assert waiting.event_id  # its id is fixed while it waits
    assert buffer.sent.accepted == 4
    events = client.session(user).events
    assert [e.track_id for e in events] == ["t0", "t1", "t2", "t3"]
    assert events[3].event_id == waiting.event_id


def test_the_event_buffer_flushes_an_old_event_in_the_background(client, user):
    with client.event_buffer(max_events=100, max_delay_s=0.1) as buffer:
        buffer.add(Event(user, "t1", "play"))
        deadline = time.monotonic() + 5
        while len(buffer) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(buffer) == 0
        assert [e.track_id for e in client.session(user).events] == ["t1"]


def test_a_failed_flush_keeps_the_events_and_their_ids():
    url = f"http://127.0.0.1:{processes.free_port()}"
    with SkiprecClient(url, retry=NO_RETRIES) as client:
        buffer = client.event_buffer(max_events=10, max_delay_s=60)
        buffer.add(Event("u", "t1", "play"))
        kept = buffer.pending
        with pytest.raises(TransportError):
            buffer.close()
        assert buffer.pending == kept


async def test_the_async_event_buffer_flushes_by_count_time_and_close(api, user):
    async with AsyncSkiprecClient(api, **OPTIONS, retry=FAST) as client:
        async with client.event_buffer(max_events=2, max_delay_s=0.1) as buffer:
            for i in range(3):
                await buffer.add(Event(user, f"t{i}", "play"))
            assert buffer.sent.accepted == 2  # the full batch went at once
            deadline = time.monotonic() + 5
            while len(buffer) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert len(buffer) == 0  # the old one went in the background
            await buffer.add(Event(user, "t3", "play"))
        assert buffer.sent.accepted == 4
        session = await client.session(user)
    assert [e.track_id for e in session.events] == ["t0", "t1", "t2", "t3"]


def test_clock_skew_correction_sends_sent_at(api, user):
    transport = LoseReplies()
    with SkiprecClient(
        api, **OPTIONS, correct_clock_skew=True, transport=transport
    ) as client:
        happened = time.time() - 5
        client.send_event(Event(user, "t1", "play", timestamp=happened))
        stored = client.session(user).events[0]
    (body,) = transport.bodies()
    assert body["timestamp"] == happened and body["sent_at"] >= happened
    assert stored.timestamp == pytest.approx(happened, abs=2.0)


# --- the README's examples -----------------------------------------------------------


def readme_python_blocks() -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_python_examples_run_against_the_service(api, capsys):
    blocks = readme_python_blocks()
    assert len(blocks) >= 3  # the quickstart twin, the sync tour, the async one
    for block in blocks:
        code = block.replace('"http://127.0.0.1:8000", api_key="<secret>"', '"URL"')
        code = code.replace('"http://127.0.0.1:8000"', '"URL"')
        code = code.replace('"URL"', f'"{api}", api_key="{API_KEY}"')
        exec(compile(code, "README.md", "exec"), {})
    assert "Recommendations(" in capsys.readouterr().out
