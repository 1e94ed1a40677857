"""Event time through the API: client clocks, late and out-of-order events, ids.

A client that sends ``timestamp`` gets its events ordered by it; a late event never
wipes the live session; a clock that runs slow or fast is cancelled by ``sent_at``;
an event too far in the future is refused with a message naming the bound; one too
old is logged and reported as ``late``. Events without ``event_id`` get one derived
from what a retry repeats.
"""

from __future__ import annotations

import asyncio
import csv
import time

from service.events_export import main as events_main


def event(user_id: str, track_id: str, kind: str = "play", **extra: object) -> dict:
    return {"user_id": user_id, "track_id": track_id, "type": kind, **extra}


async def tracks_of_session(client, user_id: str) -> list[str]:
    session = (await client.get(f"/users/{user_id}/session")).json()
    return [e["track_id"] for e in session["events"]]


async def test_plays_stamped_with_their_real_time_are_personalised(client):
    now = time.time()
    body = {
        "events": [
            event("real", track, timestamp=now - age)
            for track, age in (("t1", 600), ("t2", 400), ("t3", 200))
        ]
    }
    assert (await client.post("/events", json=body)).json()["accepted"] == 3
    answer = await client.get("/recommendations/real")
    assert answer.headers["X-Skiprec-Fallback"] == "none"
    assert await tracks_of_session(client, "real") == ["t1", "t2", "t3"]


async def test_out_of_order_events_are_ordered_by_their_time(client):
    now = time.time()
    for track, age in (("t3", 10), ("t1", 300), ("t2", 200)):
        await client.post("/events", json=event("ooo", track, timestamp=now - age))
    assert await tracks_of_session(client, "ooo") == ["t1", "t2", "t3"]


async def test_a_late_event_never_wipes_the_live_session(client):
    now = time.time()
    await client.post("/events", json=event("lw", "t1", timestamp=now))
    await client.post("/events", json=event("lw", "t2", timestamp=now - 3600))
    # The hour-old play is a session of its own, before the live one.
    assert await tracks_of_session(client, "lw") == ["t1"]
    answer = await client.get("/recommendations/lw")
    assert answer.headers["X-Skiprec-Fallback"] == "none"


async def test_sent_at_cancels_a_device_clock_that_runs_slow(client):
    now = time.time()
    behind = 30 * 60.0  # the device's clock is 30 minutes behind ours
    device_now = now - behind
    stamped = [
        event("slow", track, timestamp=device_now - age, sent_at=device_now)
        for track, age in (("t1", 120), ("t2", 60))
    ]
    await client.post("/events", json={"events": stamped})
    assert await tracks_of_session(client, "slow") == ["t1", "t2"]
    answer = await client.get("/recommendations/slow")
    assert answer.headers["X-Skiprec-Fallback"] == "none"
    # Without sent_at the same events look half an hour old: the session is over.
    for item in stamped:
        item.pop("sent_at")
        item["user_id"] = "slow-nosent"
    await client.post("/events", json={"events": stamped})
    answer = await client.get("/recommendations/slow-nosent")
    assert answer.headers["X-Skiprec-Fallback"] == "cold-start"


async def test_a_future_event_is_refused_naming_the_field_and_the_bound(
    make_client, make_settings
):
    async with make_client(make_settings(max_clock_skew_s=60)) as client:
        now = time.time()
        body = {
            "events": [
                event("fut", "t1", timestamp=now - 5),
                event("fut", "t2", timestamp=now + 3600),
            ]
        }
        response = await client.post("/events", json=body)
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["field"] == "events[1].timestamp"
        assert "ahead of the server clock (at most 60 s)" in error["message"]
        assert await tracks_of_session(client, "fut") == []  # nothing half-stored
        # Within the bound: accepted, and it hides none of the earlier history.
        body["events"][1]["timestamp"] = now + 30
        assert (await client.post("/events", json=body)).json()["accepted"] == 2
        assert await tracks_of_session(client, "fut") == ["t1", "t2"]


async def test_an_event_older_than_the_lateness_bound_is_logged_and_reported(
    make_client, make_settings, redis_url, tmp_path
):
    async with make_client(make_settings(max_lateness_s=3600)) as client:
        now = time.time()
        body = {
            "events": [
                event("old", "t1", timestamp=now - 2 * 3600, event_id="o1"),
                event("old", "t2", timestamp=now - 10, event_id="o2"),
            ]
        }
        first = (await client.post("/events", json=body)).json()
        assert first == {"accepted": 2, "duplicates": 0, "late": 1}
        again = (await client.post("/events", json=body)).json()
        assert again == {"accepted": 0, "duplicates": 2, "late": 0}
        assert await tracks_of_session(client, "old") == ["t2"]
    out = tmp_path / "log.csv"
    args = ["export", "--out", str(out), "--redis-url", redis_url]
    assert await asyncio.to_thread(events_main, args) == 0
    with out.open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["user_id"] == "old"]
    assert [row["track_id"] for row in rows] == ["t1", "t2"]  # each once, in the log


async def test_a_retry_without_event_id_is_a_duplicate(client):
    body = event("noid", "t1", timestamp=time.time() - 5)
    assert (await client.post("/events", json=body)).json()["accepted"] == 1
    retry = (await client.post("/events", json=body)).json()
    assert (retry["accepted"], retry["duplicates"]) == (0, 1)
    assert await tracks_of_session(client, "noid") == ["t1"]
    # Without a timestamp nothing ties two requests together: two plays.
    bare = event("bare", "t1")
    for _ in range(2):
        assert (await client.post("/events", json=bare)).json()["accepted"] == 1
    assert await tracks_of_session(client, "bare") == ["t1", "t1"]
