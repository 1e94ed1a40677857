"""The HTTP API on a real Redis: ingestion, sessions, filtering, fallback, limits."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from service import keys
from skiprec.policy import SessionPolicy
from tests.conftest import TINY_TOP_K


def event(user_id: str, track_id: str, kind: str = "play", **extra: object) -> dict:
    return {"user_id": user_id, "track_id": track_id, "type": kind, **extra}


async def test_post_single_event_is_readable_at_once(client):
    response = await client.post("/events", json=event("u1", "t3", event_id="e1"))
    assert response.status_code == 202
    assert response.json() == {"accepted": 1, "duplicates": 0, "late": 0}
    session = (await client.get("/users/u1/session")).json()
    assert [(e["event_id"], e["track_id"], e["type"]) for e in session["events"]] == [
        ("e1", "t3", "play")
    ]
    assert session["events"][0]["known"] is True
    assert abs(session["events"][0]["timestamp"] - time.time()) < 5


async def test_batch_keeps_order_per_user_across_users(client):
    batch = [event("a", f"t{i}", "skip" if i % 3 == 0 else "play") for i in range(10)]
    batch += [event("b", "t1"), event("a", "not-in-vocab")]
    response = await client.post("/events", json={"events": batch})
    assert response.json() == {"accepted": 12, "duplicates": 0, "late": 0}
    session = (await client.get("/users/a/session")).json()
    assert [e["track_id"] for e in session["events"]] == [
        *(f"t{i}" for i in range(10)),
        "not-in-vocab",
    ]
    assert session["events"][-1]["known"] is False
    assert session["skip_rate"] == pytest.approx(4 / 11)
    assert [
        e["track_id"] for e in (await client.get("/users/b/session")).json()["events"]
    ] == ["t1"]


async def test_retry_with_same_event_id_is_a_duplicate(client):
    body = {
        "events": [event("u", "t1", event_id="x1"), event("u", "t2", event_id="x2")]
    }
    assert (await client.post("/events", json=body)).json() == {
        "accepted": 2,
        "duplicates": 0,
        "late": 0,
    }
    assert (await client.post("/events", json=body)).json() == {
        "accepted": 0,
        "duplicates": 2,
        "late": 0,
    }
    twice_in_one = {"events": [event("u", "t3", event_id="x3")] * 2}
    assert (await client.post("/events", json=twice_in_one)).json() == {
        "accepted": 1,
        "duplicates": 1,
        "late": 0,
    }
    # Event ids are per user: another user's "x1" is a new event.
    assert (await client.post("/events", json=event("v", "t1", event_id="x1"))).json()[
        "accepted"
    ] == 1
    session = (await client.get("/users/u/session")).json()
    assert [e["track_id"] for e in session["events"]] == ["t1", "t2", "t3"]


async def test_concurrent_posts_to_one_user_all_land(make_client, make_settings):
    # 60 at once through one in-process worker: admission (test_admission) would
    # shed past SKIPREC_MAX_IN_FLIGHT; this test is about the appends.
    async with make_client(make_settings(max_in_flight=0)) as client:
        posts = [
            client.post("/events", json=event("busy", f"t{i % 50}", event_id=f"c{i}"))
            for i in range(60)
        ]
        responses = await asyncio.gather(*posts)
        assert all(r.status_code == 202 for r in responses)
        session = (await client.get("/users/busy/session")).json()
        assert sorted(e["event_id"] for e in session["events"]) == sorted(
            f"c{i}" for i in range(60)
        )


async def test_session_is_trimmed_to_max_events(make_client, make_settings):
    async with make_client(make_settings(session_max_events=8)) as client:
        body = {"events": [event("u", f"t{i}") for i in range(12)]}
        await client.post("/events", json=body)
        session = (await client.get("/users/u/session")).json()
        assert [e["track_id"] for e in session["events"]] == [
            f"t{i}" for i in range(4, 12)
        ]


async def test_excluded_skipped_tracks_never_come_back(make_client, make_settings):
    async with make_client(make_settings(skipped_rule="exclude")) as client:
        await _skip_everything_recommended(client)


async def test_the_bundle_serves_its_recorded_policy_unless_settings_say_otherwise(
    make_bundle, make_client, make_settings
):
    recorded = SessionPolicy(skipped="exclude", played="penalize", played_penalty=2.0)
    bundle = make_bundle(policy=recorded.to_dict())
    skipped = [f"t{i}" for i in range(40)]
    body = {"events": [event("r", track_id, "skip") for track_id in skipped]}
    async with make_client(make_settings(bundle_dir=bundle)) as client:
        await client.post("/events", json=body)
        items = (await client.get("/recommendations/r?k=20")).json()["items"]
        assert not set(skipped) & {item["track_id"] for item in items}
    settings = make_settings(bundle_dir=bundle, skipped_rule="none")
    async with make_client(settings) as client:
        items = (await client.get("/recommendations/r?k=20")).json()["items"]
        assert set(skipped) & {item["track_id"] for item in items}


async def test_skipped_tracks_may_come_back_by_default(client):
    # No rule by default (the measured choice): the model alone decides. 40 of the
    # 57 tracks skipped: a top-20 must repeat some unless they are excluded.
    skipped = [f"t{i}" for i in range(40)]
    body = {"events": [event("n", track_id, "skip") for track_id in skipped]}
    await client.post("/events", json=body)
    items = (await client.get("/recommendations/n?k=20")).json()["items"]
    assert len(items) == 20 and set(skipped) & {item["track_id"] for item in items}


async def _skip_everything_recommended(client) -> None:
    skipped: list[str] = []
    for _ in range(4):
        items = (await client.get("/recommendations/s?k=10")).json()["items"]
        assert not set(skipped) & {item["track_id"] for item in items}
        assert len(items) == 10
        # Skip everything just recommended: the next answer must avoid all of it.
        body = {"events": [event("s", item["track_id"], "skip") for item in items]}
        await client.post("/events", json=body)
        skipped += [item["track_id"] for item in items]
    final = (await client.get("/recommendations/s?k=10")).json()
    assert final["fallback"] is False
    assert len(final["items"]) == 10
    assert not set(skipped) & {item["track_id"] for item in final["items"]}


async def test_exclude_played_query_and_default(make_client, make_settings):
    # 40 of the 57 tracks played: any top-20 must repeat some unless they are excluded.
    played = [f"t{i}" for i in range(40)]
    body = {"events": [event("p", track_id) for track_id in played]}
    for default in (False, True):
        rule = "exclude" if default else "none"
        async with make_client(make_settings(played_rule=rule)) as client:
            await client.post("/events", json=body)
            kept = await client.get("/recommendations/p?k=20&exclude_played=false")
            dropped = await client.get("/recommendations/p?k=20&exclude_played=true")
            default_answer = await client.get("/recommendations/p?k=20")
            kept_ids = {i["track_id"] for i in kept.json()["items"]}
            dropped_ids = [i["track_id"] for i in dropped.json()["items"]]
            assert len(kept_ids) == 20 and kept_ids & set(played)
            # 17 unplayed tracks: fewer than k only because the catalogue runs out.
            assert sorted(dropped_ids) == sorted(f"t{i}" for i in range(40, 57))
            expected = dropped if default else kept
            assert default_answer.json()["items"] == expected.json()["items"]
            await client.delete("/users/p/session")


async def test_penalised_tracks_move_down_by_their_penalty(make_client, make_settings):
    # The graph returns its top-K (20 here); penalties re-rank within it.
    played = ["t1", "t2", "t3"]
    body = {"events": [event("q", track_id) for track_id in played]}
    plain_settings = make_settings(skipped_rule="none", played_rule="none")
    async with make_client(plain_settings) as client:
        await client.post("/events", json=body)
        plain = (await client.get("/recommendations/q?k=20")).json()["items"]
    penalty = 1e6  # far below every other score: the played tracks come last
    settings = make_settings(played_rule="penalize", played_penalty=penalty)
    async with make_client(settings) as client:
        penalised = (await client.get("/recommendations/q?k=20")).json()["items"]
    scores = {i["track_id"]: i["score"] for i in plain}
    moved = [i["track_id"] for i in plain if i["track_id"] in played]
    assert moved  # the tiny model ranks some played track in its top-20
    assert [i["track_id"] for i in penalised][-len(moved) :] == moved
    assert sorted(i["track_id"] for i in penalised) == sorted(scores)
    for item in penalised:
        expected = scores[item["track_id"]] - (
            penalty if item["track_id"] in played else 0
        )
        assert item["score"] == pytest.approx(expected)


async def test_graded_events_keep_their_level(client):
    body = {
        "events": [
            event("g", "t1", "skip", skip_level=0),
            event("g", "t2", "play", played_ms=175_000, duration_ms=180_000),
            event("g", "t3", "play"),
        ]
    }
    assert (await client.post("/events", json=body)).status_code == 202
    session = (await client.get("/users/g/session")).json()
    assert [(e["type"], e["skip_level"]) for e in session["events"]] == [
        ("skip", 0),
        ("play", 3),
        ("play", None),
    ]
    answer = (await client.get("/recommendations/g?k=5")).json()
    assert answer["fallback"] is False and len(answer["items"]) == 5
    assert "t1" not in {i["track_id"] for i in answer["items"]}  # graded skips count


async def test_new_user_gets_popularity_fallback(client):
    response = await client.get("/recommendations/nobody?k=5")
    assert response.status_code == 200
    assert response.headers["X-Skiprec-Fallback"] == "cold-start"
    body = response.json()
    assert body["fallback"] is True
    assert [i["track_id"] for i in body["items"]] == ["t0", "t1", "t2", "t3", "t4"]
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


async def test_recommendations_report_no_fallback_with_a_session(client):
    await client.post("/events", json=event("w", "t5"))
    response = await client.get("/recommendations/w")
    assert response.headers["X-Skiprec-Fallback"] == "none"
    assert response.json()["fallback"] is False
    assert response.json()["model_version"].startswith("sasrec-")


async def test_events_before_a_gap_are_not_in_the_model_input(
    make_client, make_settings
):
    now = time.time()
    async with make_client(make_settings(session_gap_s=600)) as client:
        old = [event("g", f"t{i}", timestamp=now - 3600 + i) for i in range(5)]
        new = [event("g", "t9", timestamp=now - 30), event("g", "t11", "skip")]
        await client.post("/events", json={"events": old + new})
        session = (await client.get("/users/g/session")).json()
        assert [e["track_id"] for e in session["events"]] == ["t9", "t11"]
        # Same answer as a user who only ever had the post-gap events.
        await client.post(
            "/events", json={"events": [event("h", "t9"), event("h", "t11", "skip")]}
        )
        with_gap = (await client.get("/recommendations/g?k=20")).json()["items"]
        fresh = (await client.get("/recommendations/h?k=20")).json()["items"]
        assert [i["track_id"] for i in with_gap] == [i["track_id"] for i in fresh]
        # A session whose last event is older than the gap is over: cold start.
        await client.post("/events", json=event("old", "t1", timestamp=now - 3600))
        stale = await client.get("/recommendations/old")
        assert stale.headers["X-Skiprec-Fallback"] == "cold-start"


async def test_iso_timestamps_are_accepted(client):
    body = event("iso", "t1", timestamp="2020-01-02T03:04:05Z")
    response = await client.post("/events", json=body)
    assert response.status_code == 202
    assert response.json()["late"] == 1  # years old: logged, not live


async def test_every_user_key_has_a_ttl(make_client, make_settings, sync_redis):
    settings = make_settings(session_ttl_s=3600, dedup_ttl_s=600)
    async with make_client(settings) as client:
        await client.post("/events", json=event("ttl", "t1", event_id="e1"))
        await client.post("/events", json=event("ttl", "t2"))
    user_keys = sync_redis.keys("skiprec:{ttl}*")
    # No list was served: the served-lists key is the only one not written.
    assert sorted(user_keys) == sorted(keys.user_keys("ttl")[:2])
    ttls = {key: sync_redis.ttl(key) for key in user_keys}
    assert 3500 < ttls[keys.session_events_key("ttl")] <= 3600
    assert 500 < ttls[keys.dedup_key("ttl")] <= 600
    # The global stream is bounded by MAXLEN instead of a TTL.
    assert sync_redis.xlen(keys.STREAM_KEY) == 2


async def test_delete_resets_the_session(client, sync_redis):
    await client.post("/events", json=event("r", "t1", event_id="e1"))
    response = await client.delete("/users/r/session")
    assert response.status_code == 204
    assert (await client.get("/users/r/session")).json()["events"] == []
    assert sync_redis.exists(*keys.user_keys("r")) == 0
    assert (await client.get("/recommendations/r")).json()["fallback"] is True


async def test_concurrent_recommendations_match_one_by_one(client):
    users = [f"c{i}" for i in range(12)]
    for i, user in enumerate(users):
        history = [
            event(user, f"t{(i * 7 + j) % 57}", "skip" if j % 2 else "play")
            for j in range(1 + i % 9)
        ]
        await client.post("/events", json={"events": history})
    alone = [(await client.get(f"/recommendations/{u}?k=20")).json() for u in users]
    together = await asyncio.gather(
        *(client.get(f"/recommendations/{u}?k=20") for u in users)
    )
    for single, batched in zip(alone, together, strict=True):
        assert [i["track_id"] for i in single["items"]] == [
            i["track_id"] for i in batched.json()["items"]
        ]
        for a, b in zip(single["items"], batched.json()["items"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


async def test_k_above_the_models_top_k_is_refused_by_model_and_fallback(client):
    await client.post("/events", json=event("k", "t1"))
    for user in ("k", "nobody"):  # the model's path, then the cold-start fallback
        response = await client.get(f"/recommendations/{user}?k=21")
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["field"] == "k" and "at most 20" in error["message"]
        assert (await client.get(f"/recommendations/{user}?k=20")).status_code == 200


async def test_health_readiness_and_metrics(client):
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] == "ok"
    assert (await client.get("/healthz")).json() == {
        **ready.json(),
        "status": "ok",
    }
    await client.post(
        "/events", json={"events": [event("m", "t1"), event("m", "t2", "skip")]}
    )
    await client.get("/recommendations/m")
    await client.get("/recommendations/nobody")
    text = (await client.get("/metrics")).text
    assert 'skiprec_events_total{type="skip"} 1.0' in text
    assert 'skiprec_events_total{type="play"} 1.0' in text
    assert 'skiprec_fallbacks_total{reason="cold-start"} 1.0' in text
    assert 'route="/recommendations/{user_id}"' in text
    assert "skiprec_model_info{model_version=" in text


async def test_api_key_guards_listener_routes_not_probes(make_client, make_settings):
    async with make_client(make_settings(api_key="s3cret")) as client:
        body = event("key", "t1")
        missing = await client.post("/events", json=body)
        assert missing.status_code == 401
        assert missing.json()["error"]["field"] == "X-API-Key"
        wrong = await client.post("/events", json=body, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        ok = await client.post("/events", json=body, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 202
        bearer = {"Authorization": "Bearer s3cret"}
        assert (
            await client.post("/events", json=body, headers=bearer)
        ).status_code == 202
        assert (await client.delete("/users/key/session")).status_code == 401
        assert (await client.post("/admin/reload")).status_code == 401
        assert (await client.get("/recommendations/key")).status_code == 401
        assert (await client.get("/users/key/session")).status_code == 401
        keyed = {"X-API-Key": "s3cret"}
        assert (
            await client.get("/recommendations/key", headers=keyed)
        ).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


async def test_redis_down_gives_fallback_and_503(make_client, make_settings):
    from tests.service.conftest import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with make_client(make_settings(redis_url=dead)) as client:
        started = time.perf_counter()
        response = await client.get("/recommendations/u?k=3")
        elapsed = time.perf_counter() - started
        assert response.status_code == 200
        assert response.headers["X-Skiprec-Fallback"] == "store-unavailable"
        assert response.json()["fallback"] is True
        assert elapsed < 0.5
        write = await client.post("/events", json=event("u", "t1"))
        assert write.status_code == 503
        assert write.headers["Retry-After"] == "1"
        ready = await client.get("/readyz")  # the model serves: Redis is reported
        assert ready.status_code == 200 and ready.json()["redis"] == "unreachable"


async def test_redis_coming_back_recovers_without_restart(
    make_client, make_settings, tmp_path
):
    from benchmarks.processes import MissingBinaryError, RedisServer

    try:
        server = RedisServer(tmp_path / "redis")
    except MissingBinaryError as exc:
        pytest.skip(f"stopping and restarting a server needs redis-server: {exc}")
    url = server.url
    async with make_client(make_settings(redis_url=url)) as client:
        assert (await client.post("/events", json=event("u", "t1"))).status_code == 503
        server.start()
        try:
            assert (
                await client.post("/events", json=event("u", "t1"))
            ).status_code == 202
            assert (await client.get("/recommendations/u")).json()["fallback"] is False
        finally:
            server.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url).ping()


async def test_openapi_documents_the_event_body(client):
    schema = (await client.get("/openapi.json")).json()
    body = schema["paths"]["/events"]["post"]["requestBody"]
    refs = body["content"]["application/json"]["schema"]["anyOf"]
    assert {r["$ref"].rsplit("/", 1)[1] for r in refs} == {
        "PlaybackEvent",
        "EventBatch",
    }
    assert "PlaybackEvent" in schema["components"]["schemas"]


async def test_embedded_redis_serves_and_keeps_data_across_restarts(
    make_client, make_settings, tmp_path
):
    settings = make_settings(redis_url=None, data_dir=tmp_path / "embedded")
    async with make_client(settings) as client:
        assert (await client.post("/events", json=event("e", "t1"))).status_code == 202
        assert (await client.get("/readyz")).status_code == 200
    assert (tmp_path / "embedded").is_dir()
    async with make_client(settings) as client:
        session = (await client.get("/users/e/session")).json()
        assert [e["track_id"] for e in session["events"]] == ["t1"]


async def test_items_carry_p_skip_only_when_the_model_has_a_skip_head(
    make_bundle, make_client, make_settings
):
    async with make_client(make_settings()) as client:
        await client.post("/events", json=event("h", "t1"))
        items = (await client.get("/recommendations/h?k=5")).json()["items"]
        assert [i["p_skip"] for i in items] == [None] * 5
    bundle = make_bundle(skip_head=True)
    async with make_client(make_settings(bundle_dir=bundle)) as client:
        items = (await client.get("/recommendations/h?k=5")).json()["items"]
        assert all(0.0 < i["p_skip"] < 1.0 for i in items)
        cold = (await client.get("/recommendations/nobody?k=5")).json()["items"]
        assert [i["p_skip"] for i in cold] == [None] * 5  # popularity has no p_skip


async def test_rank_orders_candidates_like_the_catalogue_ranking(
    make_bundle, make_client, make_settings
):
    bundle = make_bundle(skip_head=True)
    settings = make_settings(bundle_dir=bundle, skipped_rule="exclude")
    async with make_client(settings) as client:
        body = {"events": [event("c", "t1"), event("c", "t2", "skip")]}
        await client.post("/events", json=body)
        top = (await client.get("/recommendations/c?k=20")).json()["items"]
        picked = [top[7]["track_id"], top[2]["track_id"], top[12]["track_id"]]
        candidates = [*picked, "t2", "no-such-track", picked[0]]
        response = await client.post(
            "/recommendations/c/rank", json={"candidates": candidates}
        )
    assert response.status_code == 200
    answer = response.json()
    assert answer["fallback"] is False
    expected = sorted(
        (i for i in top if i["track_id"] in picked), key=lambda i: -i["score"]
    )
    assert [i["track_id"] for i in answer["items"]] == [i["track_id"] for i in expected]
    for got, want in zip(answer["items"], expected, strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert got["p_skip"] == pytest.approx(want["p_skip"], abs=1e-6)
    assert answer["unranked"] == [
        {"track_id": "no-such-track", "reason": "unknown"},
        {"track_id": "t2", "reason": "excluded"},
    ]


async def test_rank_for_a_new_listener_falls_back_to_popularity(client):
    response = await client.post(
        "/recommendations/newbie/rank", json={"candidates": ["t9", "t0", "t4"]}
    )
    answer = response.json()
    assert response.headers["X-Skiprec-Fallback"] == "cold-start"
    assert [i["track_id"] for i in answer["items"]] == ["t0", "t4", "t9"]
    assert answer["fallback"] is True and answer["unranked"] == []
    # the same shares as the catalogue's cold-start list
    url = f"/recommendations/newbie?k={TINY_TOP_K}"
    popular = (await client.get(url)).json()["items"]
    share = {i["track_id"]: i["score"] for i in popular}
    ranked = [i for i in answer["items"] if i["track_id"] in share]
    assert ranked and all(i["score"] == share[i["track_id"]] > 0 for i in ranked)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"candidates": []}, "candidates"),
        ({"candidates": ["a|b"]}, "candidates[0]"),
        ({"candidates": ["t1"] * 1001}, "candidates"),
        ({"tracks": ["t1"]}, "candidates"),  # the missing field comes first
    ],
)
async def test_rank_refuses_bad_bodies_naming_the_field(client, body, field):
    response = await client.post("/recommendations/u/rank", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
