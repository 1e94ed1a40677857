"""Safe defaults of the HTTP service: what a careless or hostile client cannot do.

- ``POST /admin/reload`` loads bundles from under the bundle root only (in-process
  app, real Redis);
- a request body that does not arrive within ``SKIPREC_BODY_TIMEOUT_S`` is a 408 and
  the connection is closed (a real uvicorn process, raw sockets);
- the OpenAPI document describes the ``X-Skiprec-Fallback`` header and the 401 of
  the routes behind the API key.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import get_args

import httpx
import pytest

from service.routes.recommendations import FALLBACK_HEADER
from service.schemas import FallbackReason

pytestmark = pytest.mark.reliability


# --- reload from the bundle root only ------------------------------------------------


@pytest.fixture
def bundle_root(tmp_path: Path, tiny_bundle_dir: Path, make_bundle) -> Path:
    """``root/current`` (the served bundle) and ``root/v2`` (another model)."""
    root = tmp_path / "bundles"
    root.mkdir()
    shutil.copytree(tiny_bundle_dir, root / "current")
    shutil.copytree(make_bundle(seed=1), root / "v2")
    return root


async def _version(client: httpx.AsyncClient) -> str:
    return (await client.get("/recommendations/nobody")).json()["model_version"]


@pytest.mark.parametrize("name", ["v2", "ABSOLUTE"], ids=["relative", "absolute"])
async def test_reload_loads_a_sibling_under_the_root(
    name, bundle_root, make_client, make_settings
):
    settings = make_settings(bundle_dir=bundle_root / "current")
    target = str(bundle_root / "v2") if name == "ABSOLUTE" else name
    async with make_client(settings) as client:
        before = await _version(client)
        response = await client.post("/admin/reload", json={"bundle_dir": target})
        assert response.status_code == 200, response.text
        assert response.json()["previous_version"] == before
        assert await _version(client) == response.json()["model_version"] != before


async def test_reload_outside_the_root_is_a_422_naming_the_field(
    bundle_root, tmp_path, tiny_bundle_dir, make_client, make_settings
):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_bundle_dir, elsewhere)
    escape = bundle_root / "escape"
    escape.symlink_to(elsewhere, target_is_directory=True)
    settings = make_settings(bundle_dir=bundle_root / "current")
    async with make_client(settings) as client:
        before = await _version(client)
        for target in (
            str(elsewhere),  # a valid bundle, but not under the root
            "../elsewhere",
            "v2/../../elsewhere",
            "escape",  # a link under the root to a directory outside it
            "/etc",
            str(tiny_bundle_dir),
        ):
            response = await client.post("/admin/reload", json={"bundle_dir": target})
            assert response.status_code == 422, (target, response.text)
            error = response.json()["error"]
            assert error["field"] == "bundle_dir"
            assert error["message"].startswith("bundle_dir: must be a directory under")
            assert "SKIPREC_BUNDLE_ROOT" in error["message"]
            assert str(tmp_path) not in response.text  # no server paths
        assert await _version(client) == before


async def test_bundle_root_setting_moves_the_root(
    bundle_root, tmp_path, make_client, make_settings
):
    other_root = tmp_path / "published"
    shutil.copytree(bundle_root / "v2", other_root / "v3")
    settings = make_settings(bundle_dir=bundle_root / "current", bundle_root=other_root)
    async with make_client(settings) as client:
        sibling = await client.post("/admin/reload", json={"bundle_dir": "../v2"})
        assert sibling.status_code == 422  # the default root no longer applies
        moved = await client.post("/admin/reload", json={"bundle_dir": "v3"})
        assert moved.status_code == 200, moved.text
        # No body: the configured bundle, wherever the root is.
        again = await client.post(
            "/admin/reload", headers={"Content-Type": "application/json"}
        )
        assert again.status_code == 200, again.text


# --- body read timeout ---------------------------------------------------------------

BODY_TIMEOUT_S = 0.5


@pytest.fixture
def slow_body_api(api_process, tiny_bundle_dir, redis_url, tmp_path):
    with api_process(
        tiny_bundle_dir,
        redis_url,
        tmp_path / "api.log",
        env_remove=("SKIPREC_API_KEY",),
        body_timeout_s=str(BODY_TIMEOUT_S),
    ) as api:
        yield api


def _post_headers(path: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: skiprec\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _read_response(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (``True``) or ``timeout_s``."""
    sock.settimeout(0.05)
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _parse(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.mark.parametrize(
    "path", ["/events", "/admin/reload", "/recommendations/u/rank"]
)
def test_a_body_that_stops_is_a_408_and_the_connection_closes(slow_body_api, path):
    with socket.create_connection(("127.0.0.1", slow_body_api.port)) as sock:
        started = time.monotonic()
        sock.sendall(_post_headers(path, 100) + b'{"user_id": "u",')
        response, closed = _read_response(sock, timeout_s=10 * BODY_TIMEOUT_S)
        elapsed = time.monotonic() - started
    assert closed, response
    status, body = _parse(response)
    assert status == 408, response
    assert body["error"]["code"] == "body_timeout"
    assert body["error"]["field"] == "body"
    assert body["error"]["message"].startswith("body: not complete within 0.5 s")
    assert b"connection: close" in response.lower()
    assert BODY_TIMEOUT_S <= elapsed < 5 * BODY_TIMEOUT_S


def test_a_trickled_body_is_cut_at_the_deadline_not_at_a_pause(slow_body_api):
    """A byte every 50 ms never pauses long, but the whole body is late: 408."""
    with socket.create_connection(("127.0.0.1", slow_body_api.port)) as sock:
        started = time.monotonic()
        sock.sendall(_post_headers("/events", 1000))
        sock.settimeout(0.05)
        response = b""
        while time.monotonic() - started < 10 * BODY_TIMEOUT_S and not response:
            try:
                sock.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                response = sock.recv(65536)
            except TimeoutError:
                pass
        elapsed = time.monotonic() - started
        # The head and the body may come in separate segments: read to the close.
        response += _read_response(sock, 10 * BODY_TIMEOUT_S)[0]
    status, body = _parse(response)
    assert status == 408
    assert body["error"]["code"] == "body_timeout"
    assert BODY_TIMEOUT_S <= elapsed < 5 * BODY_TIMEOUT_S


def test_a_prompt_body_and_the_next_request_are_served(slow_body_api):
    event = {"user_id": "prompt", "track_id": "t1", "type": "play"}
    with httpx.Client(base_url=slow_body_api.base_url) as client:
        assert client.post("/events", json=event).status_code == 202
        # After a timed-out request on another connection, the server still serves.
        with socket.create_connection(("127.0.0.1", slow_body_api.port)) as sock:
            sock.sendall(_post_headers("/events", 10))
            assert _parse(_read_response(sock, 10 * BODY_TIMEOUT_S)[0])[0] == 408
        session = client.get("/users/prompt/session").json()
        assert [e["track_id"] for e in session["events"]] == ["t1"]


# --- OpenAPI -------------------------------------------------------------------------


async def test_openapi_documents_the_fallback_header_and_the_key(client):
    schema = (await client.get("/openapi.json")).json()
    recommendation_ops = [
        schema["paths"]["/recommendations/{user_id}"]["get"],
        schema["paths"]["/recommendations/{user_id}/rank"]["post"],
    ]
    for operation in recommendation_ops:
        header = operation["responses"]["200"]["headers"][FALLBACK_HEADER]
        assert header["schema"]["enum"] == list(get_args(FallbackReason))
        assert "cold-start" in header["description"]
    others = schema["paths"]["/users/{user_id}/session"]["get"]["responses"]["200"]
    assert "headers" not in others
    guarded = {
        ("/events", "post"),
        ("/recommendations/{user_id}", "get"),
        ("/recommendations/{user_id}/rank", "post"),
        ("/users/{user_id}/session", "get"),
        ("/users/{user_id}/session", "delete"),
        ("/admin/reload", "post"),
    }
    for path, method in guarded:
        assert "401" in schema["paths"][path][method]["responses"], (path, method)
    assert "401" not in schema["paths"]["/readyz"]["get"]["responses"]
    assert "408" in schema["paths"]["/admin/reload"]["post"]["responses"]
