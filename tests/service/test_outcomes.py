"""Served lists and their outcomes, on a real Redis: each answer's request id, the
next event attributed to the newest list (or the one it names), once, and the
counters on /admin/experiments and /metrics."""

from __future__ import annotations

import asyncio
import time

import pytest

from service import keys
from service.recommend import RecommendRequest
from tests.service.conftest import serving


def event(user_id: str, track_id: str, kind: str = "play", **extra: object) -> dict:
    return {"user_id": user_id, "track_id": track_id, "type": kind, **extra}


async def listened(client, user_id: str, track_id: str = "t1") -> None:
    """A first event, so the next answer comes from the model."""
    response = await client.post("/events", json=event(user_id, track_id))
    assert response.status_code == 202


async def recommend(client, user_id: str, k: int = 10) -> dict:
    response = await client.get(f"/recommendations/{user_id}", params={"k": k})
    assert response.status_code == 200
    return response.json()


async def arm(client, k: int = 10, variant: str = "default") -> dict:
    response = await client.get("/admin/experiments", params={"k": k})
    assert response.status_code == 200, response.text
    arms = [a for a in response.json()["arms"] if a["variant"] == variant]
    assert len(arms) == 1, response.json()
    return arms[0]


def counts(arm_summary: dict, rates: str = "rates") -> dict[str, int]:
    return {name: r["successes"] for name, r in arm_summary[rates].items()}


async def test_answers_carry_a_request_id_and_the_variant(client):
    first, second = await recommend(client, "u"), await recommend(client, "u")
    assert first["variant"] == second["variant"] == "default"
    assert first["request_id"] and first["request_id"] != second["request_id"]
    summary = await arm(client)
    assert (summary["served"], summary["fallbacks"], summary["answered"]) == (2, 2, 0)


async def test_a_played_track_from_the_list_is_a_played_hit_at_its_rank(client):
    await listened(client, "u")
    answer = await recommend(client, "u")
    assert answer["fallback"] is False
    third = answer["items"][2]["track_id"]
    assert (await client.post("/events", json=event("u", third))).status_code == 202
    summary = await arm(client)
    assert summary["answered"] == 1
    assert counts(summary) == {
        "hit": 1,
        "hit_played": 1,
        "hit_skipped": 0,
        "next_skipped": 0,
    }
    assert summary["rates"]["hit"]["value"] == 1.0
    assert (await arm(client, k=2))["rates"]["hit"]["successes"] == 0  # rank 3 > 2
    assert (await arm(client, k=3))["rates"]["hit"]["successes"] == 1


async def test_a_skipped_track_outside_the_list_is_a_miss(client):
    await listened(client, "u")
    answer = await recommend(client, "u", k=5)
    listed = {item["track_id"] for item in answer["items"]}
    outside = next(f"t{i}" for i in range(57) if f"t{i}" not in listed)
    await client.post("/events", json=event("u", outside, "skip"))
    summary = await arm(client)
    assert counts(summary) == {
        "hit": 0,
        "hit_played": 0,
        "hit_skipped": 0,
        "next_skipped": 1,
    }
    assert summary["rates"]["hit"]["value"] == 0.0
    assert 0.0 == summary["rates"]["hit"]["low"] < summary["rates"]["hit"]["high"]


async def test_a_skipped_hit_counts_as_hit_skipped(client):
    await listened(client, "u")
    top = (await recommend(client, "u"))["items"][0]["track_id"]
    await client.post("/events", json=event("u", top, "skip"))
    assert counts(await arm(client)) == {
        "hit": 1,
        "hit_played": 0,
        "hit_skipped": 1,
        "next_skipped": 1,
    }


async def test_only_the_next_event_answers_a_list(client):
    await listened(client, "u")
    items = [i["track_id"] for i in (await recommend(client, "u"))["items"]]
    batch = [event("u", items[0]), event("u", items[1]), event("u", items[2])]
    await client.post("/events", json={"events": batch})
    await client.post("/events", json=event("u", items[3]))  # no list waits
    summary = await arm(client)
    assert summary["answered"] == 1
    assert (await arm(client, k=1))["rates"]["hit"]["successes"] == 1


async def test_one_batch_answering_lists_of_one_arm_counts_each_once(client):
    """The counting script sums a batch's increments per field: three lists of one
    arm, answered in one request, count three; the retried batch adds nothing."""
    users = ["a", "b", "c"]
    for user in users:
        await listened(client, user)
    tops = [(await recommend(client, u))["items"][0]["track_id"] for u in users]
    batch = {
        "events": [
            event(u, top, event_id=f"{u}-next")
            for u, top in zip(users, tops, strict=True)
        ]
    }
    for expected in (3, 0):
        reply = (await client.post("/events", json=batch)).json()
        assert reply["accepted"] == expected
        summary = await arm(client, k=1)
        assert summary["answered"] == 3
        assert counts(summary) == {
            "hit": 3,
            "hit_played": 3,
            "hit_skipped": 0,
            "next_skipped": 0,
        }


async def test_an_event_naming_a_request_id_answers_that_list(client):
    await listened(client, "u")
    older = await recommend(client, "u", k=3)
    newer = await recommend(client, "u", k=8)
    named = older["items"][0]["track_id"]
    body = event("u", named, request_id=older["request_id"])
    assert (await client.post("/events", json=body)).status_code == 202
    summary = await arm(client, k=1)
    assert summary["answered"] == 1 and summary["rates"]["hit"]["successes"] == 1
    # The newer list still waits: the next event without a request id answers it.
    outside = next(
        f"t{i}"
        for i in range(57)
        if f"t{i}" not in {item["track_id"] for item in newer["items"]}
    )
    await client.post("/events", json=event("u", outside))
    summary = await arm(client, k=20)
    assert summary["answered"] == 2 and summary["rates"]["hit"]["successes"] == 1
    # A list is answered once: naming it again attributes nothing.
    again = event("u", named, request_id=older["request_id"])
    await client.post("/events", json=again)
    assert (await arm(client))["answered"] == 2


async def test_an_unknown_request_id_attributes_nothing(client):
    await listened(client, "u")
    await recommend(client, "u")
    body = event("u", "t2", request_id="not-a-served-list")
    assert (await client.post("/events", json=body)).status_code == 202
    assert (await arm(client))["answered"] == 0


async def test_an_expired_list_attributes_nothing(make_settings):
    async with serving(make_settings(served_ttl_s=1)) as (_, client):
        await listened(client, "u")
        top = (await recommend(client, "u"))["items"][0]["track_id"]
        await asyncio.sleep(1.1)
        await client.post("/events", json=event("u", top))
        summary = await arm(client)
    assert (summary["served"], summary["answered"]) == (1, 0)


async def test_a_reset_session_forgets_its_served_lists(client, sync_redis):
    await listened(client, "u")
    top = (await recommend(client, "u"))["items"][0]["track_id"]
    assert sync_redis.llen(keys.served_key("u")) == 1
    assert (await client.delete("/users/u/session")).status_code == 204
    assert sync_redis.exists(keys.served_key("u")) == 0
    await client.post("/events", json=event("u", top))
    assert (await arm(client))["answered"] == 0


async def test_a_retried_event_is_attributed_once(client):
    await listened(client, "u")
    top = (await recommend(client, "u"))["items"][0]["track_id"]
    body = event("u", top, event_id="e-1")
    for _ in range(3):
        assert (await client.post("/events", json=body)).status_code == 202
    summary = await arm(client)
    assert summary["answered"] == 1 and summary["rates"]["hit"]["successes"] == 1


async def test_a_retry_completes_a_count_that_failed(client, sync_redis):
    """The attribution was made but its count was lost (a 503 after the append):
    the client's retry is a duplicate, reports the same attribution, and it is
    counted then, once."""
    await listened(client, "u")
    top = (await recommend(client, "u"))["items"][0]["track_id"]
    body = event("u", top, event_id="e-1")
    await client.post("/events", json=body)
    sync_redis.delete(keys.OUTCOME_COUNTS_KEY, keys.COUNTED_KEY)  # the lost count
    await recommend(client, "u")  # a newer list: the answered one is not the newest
    for _ in range(2):
        response = await client.post("/events", json=body)
        assert response.json()["duplicates"] == 1
    summary = await arm(client)
    assert summary["answered"] == 1 and summary["rates"]["hit"]["successes"] == 1


async def test_fallback_answers_are_counted_apart(client):
    cold = await recommend(client, "new")
    assert cold["fallback"] is True
    await client.post("/events", json=event("new", cold["items"][0]["track_id"]))
    summary = await arm(client)
    assert (summary["served"], summary["fallbacks"], summary["answered"]) == (1, 1, 0)
    assert summary["fallback_rates"]["hit"]["successes"] == 1
    assert summary["fallback_rates"]["hit"]["trials"] == 1
    assert summary["rates"]["hit"]["value"] is None


async def test_a_list_kept_after_its_next_event_is_superseded(make_settings):
    """The race of a list written after the response: the listener's next event
    reached Redis first, so the list never waited for the event after it."""
    async with serving(make_settings()) as (state, client):
        await listened(client, "u")
        answer = await state.recommender.recommend(
            RecommendRequest("u", 10, now=time.time())
        )
        await client.post("/events", json=event("u", answer.items[0].track_id))
        await state.recommender.keep(answer)  # arrives late
        await client.post("/events", json=event("u", answer.items[1].track_id))
        summary = await arm(client)
    assert (summary["served"], summary["answered"]) == (1, 0)


async def test_late_events_answer_no_list(client):
    await listened(client, "u")
    top = (await recommend(client, "u"))["items"][0]["track_id"]
    body = event("u", top, timestamp="2020-01-02T03:04:05Z")
    assert (await client.post("/events", json=body)).json()["late"] == 1
    assert (await arm(client))["answered"] == 0


async def test_metrics_expose_the_shared_counters(client):
    await listened(client, "u")
    answer = await recommend(client, "u")
    await client.post("/events", json=event("u", answer["items"][0]["track_id"]))
    text = (await client.get("/metrics")).text
    version = f'model_version="{answer["model_version"]}"'
    arm_labels = f'{version},variant="default"'
    assert f"skiprec_served_lists_total{{{arm_labels}}} 1.0" in text
    assert f"skiprec_served_fallbacks_total{{{arm_labels}}} 0.0" in text
    # The text format sorts labels by name.
    answered = f'answer="model",{version},next="played",variant="default"'
    assert f"skiprec_answered_lists_total{{{answered}}} 1.0" in text
    hit = f'answer="model",k="1",{version},next="played",variant="default"'
    assert f"skiprec_recommendation_hits_total{{{hit}}} 1.0" in text


@pytest.mark.parametrize("route", ["/admin/experiments"])
async def test_experiments_need_the_api_key(make_settings, route):
    async with serving(make_settings(api_key="s3cret")) as (_, client):
        assert (await client.get(route)).status_code == 401
        ok = await client.get(route, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert ok.json() == {"k": 10, "control": None, "arms": []}


def same_slot_users(count: int) -> list[str]:
    from redis.crc import key_slot

    by_slot: dict[int, list[str]] = {}
    for i in range(100_000):
        user = f"slot-{i}"
        users = by_slot.setdefault(key_slot(keys.session_events_key(user).encode()), [])
        users.append(user)
        if len(users) == count:
            return users
    raise AssertionError("no slot shared")


async def test_users_sharing_a_slot_in_one_request_each_answer_their_own_list(client):
    """One script call per slot: several users' keys in one call, each in its place."""
    first, second = same_slot_users(2)
    for user in (first, second):
        await listened(client, user)
    tops = [
        (await recommend(client, u))["items"][0]["track_id"] for u in (first, second)
    ]
    batch = [event(first, tops[0]), event(second, "t56", "skip")]
    assert (await client.post("/events", json={"events": batch})).json()[
        "accepted"
    ] == 2
    for user, track in ((first, tops[0]), (second, "t56")):
        session = (await client.get(f"/users/{user}/session")).json()["events"]
        assert [e["track_id"] for e in session] == ["t1", track]
    summary = await arm(client, k=20)
    assert summary["answered"] == 2
    assert summary["rates"]["next_skipped"]["successes"] == 1
