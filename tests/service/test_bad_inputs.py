"""Hostile and mistaken input: every case is a 4xx whose message names the field."""

from __future__ import annotations

import pytest

GOOD = {"user_id": "u1", "track_id": "t1", "type": "play"}


def with_(**changes: object) -> dict:
    body = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return body


def raw(content: bytes, content_type: str = "application/json") -> dict:
    return {"content": content, "headers": {"Content-Type": content_type}}


EVENT_CASES = [
    # (id, request kwargs, status, field named in the message)
    ("missing user_id", {"json": with_(user_id=...)}, 422, "user_id"),
    ("missing track_id", {"json": with_(track_id=...)}, 422, "track_id"),
    ("missing type", {"json": with_(type=...)}, 422, "type"),
    ("user_id number", {"json": with_(user_id=42)}, 422, "user_id"),
    ("track_id null", {"json": with_(track_id=None)}, 422, "track_id"),
    ("type unknown", {"json": with_(type="like")}, 422, "type"),
    ("type wrong case", {"json": with_(type="PLAY")}, 422, "type"),
    ("empty user_id", {"json": with_(user_id="")}, 422, "user_id"),
    ("long track_id", {"json": with_(track_id="x" * 129)}, 422, "track_id"),
    ("newline in id", {"json": with_(user_id="a\nb")}, 422, "user_id"),
    ("NUL in id", {"json": with_(track_id="a\x00b")}, 422, "track_id"),
    ("brace in id", {"json": with_(user_id="{x}")}, 422, "user_id"),
    ("pipe in id", {"json": with_(track_id="a|b")}, 422, "track_id"),
    ("space in event_id", {"json": with_(event_id="a b")}, 422, "event_id"),
    ("unicode id", {"json": with_(user_id="ü")}, 422, "user_id"),
    ("timestamp bool", {"json": with_(timestamp=True)}, 422, "timestamp"),
    ("timestamp text", {"json": with_(timestamp="yesterday")}, 422, "timestamp"),
    ("timestamp negative", {"json": with_(timestamp=-1)}, 422, "timestamp"),
    ("timestamp in ms", {"json": with_(timestamp=1.7e12)}, 422, "timestamp"),
    ("timestamp list", {"json": with_(timestamp=[1])}, 422, "timestamp"),
    ("unknown field", {"json": with_(rating=5)}, 422, "rating"),
    ("skip_level out of range", {"json": with_(skip_level=4)}, 422, "skip_level"),
    ("skip_level contradicts play", {"json": with_(skip_level=0)}, 422, "skip_level"),
    ("skip_level contradicts skip", {"json": with_(type="skip", skip_level=3)}, 422,
     "skip_level"),
    ("played_ms alone", {"json": with_(played_ms=1000)}, 422, "duration_ms"),
    ("play time contradicts play", {"json": with_(played_ms=1, duration_ms=100)},
     422, "duration_ms"),
    ("level and play time", {"json": with_(skip_level=3, played_ms=99,
                                           duration_ms=100)}, 422, "duration_ms"),
    ("zero duration", {"json": with_(played_ms=0, duration_ms=0)}, 422,
     "duration_ms"),
    ("body is a list", {"json": [GOOD]}, 422, "body"),
    ("body is a string", {"json": "play"}, 422, "body"),
    ("events not a list", {"json": {"events": GOOD}}, 422, "events"),
    ("events empty", {"json": {"events": []}}, 422, "events"),
    ("bad event in batch", {"json": {"events": [GOOD, with_(type="x")]}}, 422,
     "events[1].type"),
    ("oversized batch", {"json": {"events": [GOOD] * 1001}}, 422, "events"),
    ("malformed JSON", raw(b'{"user_id": "u1",'), 400, "body"),
    ("empty body", raw(b""), 400, "body"),
    ("not UTF-8", raw(b'{"user_id": "\xff"}'), 400, "body"),
    ("wrong content type", raw(b"user_id=u1", "application/x-www-form-urlencoded"),
     415, "Content-Type"),
    ("no content type", {"content": b"{}"}, 415, "Content-Type"),
    ("oversized body", raw(b'{"events": [' + b" " * 2_000_000 + b"]}"), 413, "body"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [case[1:] for case in EVENT_CASES],
    ids=[case[0] for case in EVENT_CASES],
)
async def test_bad_event_is_a_4xx_naming_the_field(client, kwargs, status, field):
    response = await client.post("/events", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"].startswith(field), error["message"]
    assert "Traceback" not in response.text and "/work" not in response.text


QUERY_CASES = [
    ("k zero", "/recommendations/u?k=0", "query.k"),
    ("k too big", "/recommendations/u?k=201", "query.k"),
    ("k not a number", "/recommendations/u?k=ten", "query.k"),
    ("exclude_played junk", "/recommendations/u?exclude_played=maybe",
     "query.exclude_played"),
    ("user id with space", "/recommendations/a%20b", "path.user_id"),
    ("user id with newline", "/users/a%0Ab/session", "path.user_id"),
    ("user id too long", "/recommendations/" + "u" * 129, "path.user_id"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("url", "field"),
    [case[1:] for case in QUERY_CASES],
    ids=[case[0] for case in QUERY_CASES],
)
async def test_bad_query_or_path_is_a_422_naming_the_field(client, url, field):
    response = await client.get(url)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"].startswith(field)


async def test_oversized_body_without_content_length_is_refused(client):
    async def chunks():
        for _ in range(40):
            yield b" " * 65536

    response = await client.post(
        "/events", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "body"


async def test_reload_body_errors_name_the_field(client):
    response = await client.post("/admin/reload", json={"bundle": "x"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "bundle"
    response = await client.post("/admin/reload", json={"bundle_dir": 3})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "bundle_dir"


async def test_unknown_route_and_method_are_4xx(client):
    assert (await client.get("/nope")).status_code == 404
    assert (await client.put("/events", json=GOOD)).status_code == 405


POST_ROUTES = ["/events", "/recommendations/u/rank", "/admin/reload"]


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b"", {}),  # a browser's cross-origin "simple request": no preflight
        (b"", {"Content-Type": "text/plain"}),
        (b"{}", {"Content-Type": "text/plain"}),
        (b"{}", {"Content-Type": "application/x-www-form-urlencoded"}),
    ],
    ids=["empty, none", "empty, text/plain", "{} text/plain", "{} form"],
)
async def test_every_post_needs_a_json_content_type(client, path, content, headers):
    response = await client.post(path, content=content, headers=headers)
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["field"] == "Content-Type"
    assert error["message"].startswith("Content-Type: must be application/json")


def test_the_post_routes_listed_are_all_of_them():
    from service.main import create_app

    schema = create_app().openapi()
    posts = {path for path, ops in schema["paths"].items() if "post" in ops}
    assert posts == {p.replace("/u/", "/{user_id}/") for p in POST_ROUTES}


async def test_empty_reload_with_json_content_type_rereads_the_configured_dir(
    client,
):
    response = await client.post(
        "/admin/reload", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text
