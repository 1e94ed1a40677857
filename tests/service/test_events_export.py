"""Live events -> `skiprec events export` -> the event loader -> a training run."""

from __future__ import annotations

import asyncio
import time

from service.events_export import main as events_main


async def test_export_round_trips_through_the_event_loader(client, redis_url, tmp_path):
    from training.data import load_sessions

    now = time.time()
    listens = {
        "ann": [("t1", "play"), ("t2", "skip"), ("t3", "play")],
        "bob": [("t4", "skip"), ("t5", "play")],
    }
    for user, events in listens.items():
        body = {
            "events": [
                {
                    "event_id": f"{user}-{i}",
                    "user_id": user,
                    "track_id": track,
                    "type": kind,
                    "timestamp": now - 100 + i,
                }
                for i, (track, kind) in enumerate(events)
            ]
        }
        await client.post("/events", json=body)
        await client.post("/events", json=body)  # a retry must not duplicate rows
    out = tmp_path / "live.csv"
    args = ["export", "--out", str(out), "--redis-url", redis_url]
    assert await asyncio.to_thread(events_main, args) == 0  # the CLI runs its own loop
    sessions = {s.session_id: s for s in load_sessions(out, format="events")}
    assert set(sessions) == {"ann#0", "bob#0"}
    for user, events in listens.items():
        session = sessions[f"{user}#0"]
        assert list(session.track_ids) == [track for track, _ in events]
        assert list(session.skipped) == [kind == "skip" for _, kind in events]


async def test_a_model_trains_on_exported_live_events(client, redis_url, tmp_path):
    from training.cli.train import main as train_main

    now = time.time()
    events = [
        {
            "user_id": f"user{u}",
            "track_id": f"t{(u * 3 + i) % 20}",
            "type": "skip" if (u + i) % 4 == 0 else "play",
            "timestamp": now - 1000 + i,
        }
        for u in range(30)
        for i in range(8)
    ]
    for start in range(0, len(events), 100):
        await client.post("/events", json={"events": events[start : start + 100]})
    out = tmp_path / "live.csv"
    args = ["export", "--out", str(out), "--redis-url", redis_url]
    assert await asyncio.to_thread(events_main, args) == 0  # the CLI runs its own loop
    run_dir = tmp_path / "run"
    code = train_main(
        ["--data", str(out), "--out", str(run_dir), "--format", "events"]
        + ["--config", "training/configs/tiny.toml", "--epochs", "1", "--quiet"]
    )
    assert code == 0
    assert (run_dir / "checkpoint.pt").is_file()
