"""Overload and a failing model: shed with a 503 rather than queue; one failing ONNX
call answers its batch with the flagged popularity fallback, not an error."""

from __future__ import annotations

import asyncio
import logging
import threading

from tests.service.conftest import serving
from tests.service.test_readiness import metric


def play(user_id: str, track_id: str = "t1") -> dict:
    return {"user_id": user_id, "track_id": track_id, "type": "play"}


def hold_inference(model, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make ``model.infer`` wait: ``entered`` is set once a batch is inside it, and
    that batch (and every later one) runs when ``release`` is set."""
    entered, release = threading.Event(), threading.Event()
    real_infer = model.infer

    def slow_infer(requests):
        entered.set()
        assert release.wait(10)
        return real_infer(requests)

    monkeypatch.setattr(model, "infer", slow_infer)
    return entered, release


async def test_a_full_inference_queue_sheds_with_503_and_counts_it(
    make_settings, monkeypatch
):
    # Every ranking through the queue (a lone one would run inline, held).
    settings = make_settings(
        max_inference_batch=1, max_inference_queue=2, inline_inference=False
    )
    async with serving(settings) as (state, client):
        users = [f"u{i}" for i in range(7)]
        await client.post("/events", json={"events": [play(u) for u in users]})
        entered, release = hold_inference(state.models.current, monkeypatch)
        first = asyncio.create_task(client.get(f"/recommendations/{users[0]}"))
        assert await asyncio.to_thread(entered.wait, 10)  # the worker is busy
        # Of six more, two wait in the queue; the other four are shed at once.
        rest = [
            asyncio.create_task(client.get(f"/recommendations/{u}")) for u in users[1:]
        ]
        for _ in range(200):
            if sum(task.done() for task in rest) == 4:
                break
            await asyncio.sleep(0.01)
        shed = [task for task in rest if task.done()]
        waiting = [task for task in rest if not task.done()]
        assert (len(shed), len(waiting)) == (4, 2)
        for task in shed:
            response = task.result()
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "1"
            assert response.json()["error"]["code"] == "overloaded"
        release.set()
        for response in await asyncio.gather(first, *waiting):
            assert response.status_code == 200
            assert response.headers["X-Skiprec-Fallback"] == "none"
        text = (await client.get("/metrics")).text
        assert metric(text, "skiprec_inference_shed_total") == 4.0


async def test_a_failing_onnx_call_answers_its_batch_with_the_fallback(
    make_settings, monkeypatch, caplog
):
    async with serving(make_settings()) as (state, client):
        users = ["a", "b", "c"]
        await client.post("/events", json={"events": [play(u) for u in users]})
        popular = (await client.get("/recommendations/nobody?k=5")).json()["items"]
        model = state.models.current
        calls = []

        def broken_infer(requests):
            calls.append(len(requests))
            raise RuntimeError("onnxruntime: bad allocation")

        monkeypatch.setattr(model, "infer", broken_infer)
        with caplog.at_level(logging.ERROR, logger="service.inference"):
            answers = await asyncio.gather(
                *(client.get(f"/recommendations/{u}?k=5") for u in users)
            )
            ranked = await client.post(
                "/recommendations/a/rank", json={"candidates": ["t3", "t0", "nope"]}
            )
        for answer in answers:
            assert answer.status_code == 200
            assert answer.headers["X-Skiprec-Fallback"] == "model-error"
            assert answer.json()["fallback_reason"] == "model-error"
            assert answer.json()["items"] == popular
        assert ranked.status_code == 200
        assert ranked.json()["fallback_reason"] == "model-error"
        assert [i["track_id"] for i in ranked.json()["items"]] == ["t0", "t3"]
        assert ranked.json()["unranked"] == [{"track_id": "nope", "reason": "unknown"}]
        failures = [r for r in caplog.records if r.exc_info]
        assert len(failures) == len(calls)  # one line per failed batch, with the error
        assert "bad allocation" in caplog.text
        text = (await client.get("/metrics")).text
        assert metric(text, "skiprec_inference_errors_total") == len(calls)
        assert metric(text, 'skiprec_fallbacks_total{reason="model-error"}') == 4.0
        monkeypatch.undo()
        answer = await client.get("/recommendations/a?k=5")
        assert answer.headers["X-Skiprec-Fallback"] == "none"
        assert (await client.get("/readyz")).status_code == 200
