"""Hostile input and access control: API key, id rules, size limits, leaks, CORS.

Runs the app in-process on the suite's real Redis. Complements
tests/service/test_bad_inputs.py (the field-naming 4xx table) with what an attacker
would try: keys that are almost right, ids built to break Redis key layout or the
stored record, oversized and unframed bodies, and errors that could leak internals.
"""

from __future__ import annotations

import pytest
import redis

import service.deps
from service.session_store import SessionStore

pytestmark = pytest.mark.reliability

KEY = "k3y-0123456789abcdef"


def event(user_id: str = "u", track_id: str = "t1", **extra: object) -> dict:
    return {"user_id": user_id, "track_id": track_id, "type": "play", **extra}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/events", event()),
        ("POST", "/events", {"events": [event()]}),
        ("GET", "/users/u/session", None),
        ("DELETE", "/users/u/session", None),
        ("GET", "/recommendations/u", None),
        ("POST", "/recommendations/u/rank", {"candidates": ["t1", "t2"]}),
        ("POST", "/admin/reload", {}),
    ],
)
async def test_api_key_is_required_on_every_listener_route(
    method, path, body, make_client, make_settings
):
    async with make_client(make_settings(api_key=KEY)) as client:
        for headers in (
            {},
            {"X-API-Key": ""},
            {"X-API-Key": KEY[:-1]},
            {"X-API-Key": KEY + "x"},
            {"X-API-Key": KEY.upper()},
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": "Bearer"},
        ):
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["error"]["code"] == "unauthorized"
            assert KEY not in response.text
        for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code in (200, 202, 204), response.text


OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/")


async def test_probes_metrics_and_docs_need_no_key_and_no_key_means_open(
    make_client, make_settings
):
    async with make_client(make_settings(api_key=KEY)) as client:
        for path in OPEN_PATHS:
            assert (await client.get(path)).status_code == 200, path
    async with make_client(make_settings()) as client:
        assert (await client.post("/events", json=event())).status_code == 202
        assert (await client.get("/users/u/session")).status_code == 200


async def test_every_documented_route_but_the_probes_needs_the_key(
    make_client, make_settings
):
    """Walks the OpenAPI paths, so a router added without the key fails here."""
    async with make_client(make_settings(api_key=KEY)) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
        guarded, open_ = set(), set()
        for template, operations in paths.items():
            for method in operations:
                url = template.replace("{user_id}", "u")
                response = await client.request(method, url, json={})
                target = guarded if response.status_code == 401 else open_
                target.add(f"{method.upper()} {template}")
    assert open_ == {"GET /healthz", "GET /readyz", "GET /metrics"}
    assert guarded == {
        "POST /events",
        "GET /recommendations/{user_id}",
        "POST /recommendations/{user_id}/rank",
        "GET /users/{user_id}/session",
        "DELETE /users/{user_id}/session",
        "POST /admin/reload",
        "GET /admin/experiments",
    }


async def test_api_key_comparison_is_constant_time(
    make_client, make_settings, monkeypatch
):
    compared: list[tuple[bytes, bytes]] = []
    real = service.deps.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.deps.hmac, "compare_digest", spy)
    async with make_client(make_settings(api_key=KEY)) as client:
        await client.post("/events", json=event(), headers={"X-API-Key": "wrong"})
        await client.post("/events", json=event(), headers={"X-API-Key": KEY})
    assert compared == [(b"wrong", KEY.encode()), (KEY.encode(), KEY.encode())]


HOSTILE_IDS = [
    "{other}",  # a Redis Cluster hash tag: would move the key to another slot
    "a}b{c",
    "a|b",  # the stored record's field separator
    "a b",
    "a\r\nSET x y",  # protocol injection
    "a\x00b",
    "../../etc/passwd",
    "é",
    "x" * 129,
    "",
    "*",
]


@pytest.mark.parametrize("bad", HOSTILE_IDS, ids=repr)
@pytest.mark.parametrize("field", ["user_id", "track_id", "event_id"])
async def test_hostile_ids_are_refused_and_never_reach_redis(
    field, bad, client, sync_redis: redis.Redis
):
    response = await client.post("/events", json=event(**{field: bad}))
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert sync_redis.keys("*") == []


@pytest.mark.parametrize("bad", ["{x}", "a|b", "x" * 129, "a%20b", "%00"], ids=repr)
async def test_hostile_user_ids_in_paths_are_refused(bad, client):
    for method, path in (
        ("GET", f"/recommendations/{bad}"),
        ("GET", f"/users/{bad}/session"),
        ("DELETE", f"/users/{bad}/session"),
    ):
        response = await client.request(method, path)
        assert response.status_code == 422, (method, path)


async def test_the_longest_allowed_ids_round_trip(client):
    long_id = "A-z0.9:_@" * 14 + "xx"  # 128 characters of the allowed set
    assert len(long_id) == 128
    body = event(user_id=long_id, track_id=long_id, event_id=long_id)
    assert (await client.post("/events", json=body)).status_code == 202
    session = (await client.get(f"/users/{long_id}/session")).json()
    assert session["events"][0]["event_id"] == long_id


async def test_body_and_batch_limits(make_client, make_settings, sync_redis):
    async with make_client(make_settings(max_body_bytes=4096, max_batch=5)) as client:
        big = {"events": [event(track_id="t" + str(i)) for i in range(200)]}
        assert (await client.post("/events", json=big)).status_code == 413

        async def unframed():
            for _ in range(100):
                yield b" " * 100  # no Content-Length: the limit applies while reading

        response = await client.post(
            "/events",
            content=unframed(),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 413
        six = {"events": [event()] * 6}
        response = await client.post("/events", json=six)
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "events"
        lying = await client.post(
            "/events",
            content=b"{}",
            headers={"Content-Type": "application/json", "Content-Length": "99999"},
        )
        assert lying.status_code in (400, 413)
    assert sync_redis.keys("*") == []


async def test_unexpected_errors_leak_no_trace_or_path(
    make_settings, monkeypatch, tmp_path
):
    import httpx

    from service.main import create_app

    async def broken(self, user_id, now):
        raise RuntimeError(f"boom in {tmp_path}/secret.py line 3")

    monkeypatch.setattr(SessionStore, "read_session", broken)
    app = create_app(make_settings())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            response = await c.get("/users/u/session")
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal server error",
            "field": None,
        }
    }


async def test_cors_is_off_by_default_and_configurable(make_client, make_settings):
    preflight = {
        "Origin": "https://demo.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key",
    }
    async with make_client(make_settings()) as client:
        response = await client.options("/events", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    settings = make_settings(cors_origins=["https://demo.example"])
    async with make_client(settings) as client:
        allowed = await client.options("/events", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://demo.example"
        other = await client.options(
            "/events", headers=preflight | {"Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
        simple = await client.get(
            "/recommendations/u", headers={"Origin": "https://demo.example"}
        )
        exposed = simple.headers["access-control-expose-headers"]
        assert "X-Skiprec-Fallback" in exposed
