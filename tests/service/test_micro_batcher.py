"""The micro-batcher: a lone ranking runs on the event loop, concurrent ones are
batched in the inference thread, and both give the same answers."""

from __future__ import annotations

import asyncio
import threading

from service.inference import INLINE_MAX_STEP_S
from tests.service.conftest import serving
from tests.service.test_overload import play
from tests.service.test_readiness import metric


def record_threads(model, monkeypatch) -> list[tuple[int, str]]:
    """``(batch size, thread name)`` of every ``model.infer`` call."""
    calls: list[tuple[int, str]] = []
    real_infer = model.infer

    def infer(requests):
        calls.append((len(requests), threading.current_thread().name))
        return real_infer(requests)

    monkeypatch.setattr(model, "infer", infer)
    return calls


async def test_a_lone_ranking_runs_on_the_loop_and_equals_the_batched_one(
    make_settings, monkeypatch
):
    async with serving(make_settings()) as (state, client):
        await client.post(
            "/events", json={"events": [play("u", "t1"), play("u", "t2")]}
        )
        calls = record_threads(state.models.current, monkeypatch)
        alone = await client.get("/recommendations/u?k=5")
        ranked_alone = await client.post(
            "/recommendations/u/rank", json={"candidates": ["t3", "t0", "t4"]}
        )
        loop_thread = threading.current_thread().name
        assert calls == [(1, loop_thread), (1, loop_thread)]
        state.batcher.inline = False
        through_thread = await client.get("/recommendations/u?k=5")
        ranked_through = await client.post(
            "/recommendations/u/rank", json={"candidates": ["t3", "t0", "t4"]}
        )
        assert [name.startswith("onnx") for _, name in calls[2:]] == [True, True]
        assert alone.json()["items"] == through_thread.json()["items"]
        assert ranked_alone.json()["items"] == ranked_through.json()["items"]
        assert alone.headers["X-Skiprec-Fallback"] == "none"
        text = (await client.get("/metrics")).text
        assert metric(text, "skiprec_inference_inline_total") == 2.0


async def test_concurrent_rankings_are_batched_in_the_inference_thread(
    make_settings, monkeypatch
):
    async with serving(make_settings()) as (state, client):
        users = [f"u{i}" for i in range(6)]
        await client.post("/events", json={"events": [play(u) for u in users]})
        calls = record_threads(state.models.current, monkeypatch)
        answers = await asyncio.gather(
            *(client.get(f"/recommendations/{u}?k=5") for u in users)
        )
        assert {a.headers["X-Skiprec-Fallback"] for a in answers} == {"none"}
        # Their session reads share one round trip, so all six are being ranked
        # when the first reaches the batcher: none is alone.
        assert sum(size for size, _ in calls) == len(users)
        assert all(name.startswith("onnx") for _, name in calls)
        assert max(size for size, _ in calls) > 1
        text = (await client.get("/metrics")).text
        assert metric(text, "skiprec_inference_inline_total") == 0.0


async def test_a_model_with_a_long_lone_step_never_holds_the_loop(
    make_settings, monkeypatch
):
    async with serving(make_settings()) as (state, client):
        await client.post("/events", json={"events": [play("u")]})
        model = state.models.current
        assert 0.0 < model.lone_step_s <= INLINE_MAX_STEP_S  # measured at load
        calls = record_threads(model, monkeypatch)
        monkeypatch.setattr(model, "lone_step_s", INLINE_MAX_STEP_S * 1.5)
        answer = await client.get("/recommendations/u?k=5")
        assert answer.headers["X-Skiprec-Fallback"] == "none"
        assert [name.startswith("onnx") for _, name in calls] == [True]
        text = (await client.get("/metrics")).text
        assert metric(text, "skiprec_inference_inline_total") == 0.0
