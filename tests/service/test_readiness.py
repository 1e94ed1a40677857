"""Readiness is "can serve": it follows the model and the inference worker, not Redis.

A Redis outage must not take every replica out of the load balancer at once (the
popularity fallback answers without Redis); Redis is reported in the probes' bodies
and in ``skiprec_redis_up``. A dead inference worker makes the replica unready until
the watchdog has restarted it.
"""

from __future__ import annotations

import asyncio

from tests.service.conftest import free_port, serving


def metric(text: str, name: str) -> float:
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name)]
    return float(values[0]) if values else 0.0


async def test_ready_with_redis_up_reports_it(client):
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["redis"] == "ok" and ready.json()["inference"] == "ok"
    assert metric((await client.get("/metrics")).text, "skiprec_redis_up") == 1.0


async def test_redis_down_keeps_the_replica_ready_and_serving_the_fallback(
    make_client, make_settings
):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with make_client(make_settings(redis_url=dead)) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
        assert ready.json()["redis"] == "unreachable"
        assert ready.json()["model_version"]
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["redis"] == "unreachable"
        answer = await client.get("/recommendations/u?k=3")
        assert answer.status_code == 200
        assert answer.headers["X-Skiprec-Fallback"] == "store-unavailable"
        # The fallback keeps the model's rule for k.
        assert (await client.get("/recommendations/u?k=21")).status_code == 422
        assert metric((await client.get("/metrics")).text, "skiprec_redis_up") == 0.0


async def test_a_dead_inference_worker_makes_the_replica_unready_until_restarted(
    make_settings, monkeypatch
):
    # A lone request would be ranked inline, never reaching the worker.
    async with serving(make_settings(inline_inference=False)) as (state, client):
        await client.post(
            "/events", json={"user_id": "w", "track_id": "t1", "type": "play"}
        )
        state.batcher.restart_delay_s = 0.5

        async def dies(loop, batch):
            raise RuntimeError("a bug in the worker loop")

        monkeypatch.setattr(state.batcher, "_infer", dies)
        answer = await client.get("/recommendations/w?k=5")
        # Its request was in the batch when the worker died: try later, elsewhere.
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "1"
        assert answer.json()["error"]["code"] == "model_unavailable"
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "1"
        assert ready.json()["inference"] == "restarting"
        assert (await client.get("/healthz")).status_code == 200  # alive all along
        assert (await client.get("/recommendations/w?k=5")).status_code == 503
        monkeypatch.undo()
        for _ in range(40):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await client.get("/readyz")).json()["inference"] == "ok"
        answer = await client.get("/recommendations/w?k=5")
        assert answer.status_code == 200
        assert answer.headers["X-Skiprec-Fallback"] == "none"
        text = (await client.get("/metrics")).text
        assert metric(text, "skiprec_inference_worker_restarts_total") == 1.0
