"""Hot reload: a good bundle swaps in atomically; a bad one is refused."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest


@pytest.fixture
async def client(make_client, make_settings, tmp_path_factory):
    # The bundles these tests load live all over the run's temporary directory.
    settings = make_settings(bundle_root=tmp_path_factory.getbasetemp())
    async with make_client(settings) as http:
        yield http


async def version_of(client) -> str:
    await client.post(
        "/events", json={"user_id": "v", "track_id": "t1", "type": "play"}
    )
    return (await client.get("/recommendations/v")).json()["model_version"]


async def test_reload_swaps_in_a_good_bundle(client, make_bundle, tiny_bundle_dir):
    before = await version_of(client)
    other = make_bundle(seed=1)
    response = await client.post("/admin/reload", json={"bundle_dir": str(other)})
    assert response.status_code == 200, response.text
    after = response.json()["model_version"]
    assert response.json()["previous_version"] == before
    assert after != before
    assert await version_of(client) == after
    metrics = (await client.get("/metrics")).text
    info = f'skiprec_model_info{{model_version="{after}",variant="default"}} 1.0'
    assert info in metrics
    serving = [line for line in metrics.splitlines() if "skiprec_model_info{" in line]
    assert not [line for line in serving if before in line]


async def test_reload_without_body_rereads_the_configured_dir(client):
    before = await version_of(client)
    json_type = {"Content-Type": "application/json"}
    response = await client.post("/admin/reload", headers=json_type)
    assert response.status_code == 200
    assert response.json() == {
        "model_version": before,
        "previous_version": before,
        "variant": "default",
    }


async def test_bad_bundles_are_refused_and_the_old_one_keeps_serving(
    client, tiny_bundle_dir, tmp_path
):
    before = await version_of(client)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_bundle_dir, corrupt)
    with (corrupt / "model.onnx").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00" * 16)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_bundle_dir, incomplete)
    (incomplete / "vocab.json").unlink()
    future = tmp_path / "future"
    shutil.copytree(tiny_bundle_dir, future)
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["schema_version"] = 999
    (future / "manifest.json").write_text(json.dumps(manifest))
    cases = {
        corrupt: "sha256",
        incomplete: "vocab.json",
        future: "schema_version",
        tmp_path / "missing": "manifest.json",
    }
    for path, words in cases.items():
        response = await client.post("/admin/reload", json={"bundle_dir": str(path)})
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "bundle_rejected"
        assert words in error["message"]
        assert str(tmp_path) not in response.text  # no server paths in responses
        assert await version_of(client) == before


async def test_bundle_longer_than_the_session_is_refused(
    make_client, make_settings, make_bundle, tmp_path_factory
):
    long_model = make_bundle(max_seq_len=16)
    settings = make_settings(
        session_max_events=8, bundle_root=tmp_path_factory.getbasetemp()
    )
    async with make_client(settings) as client:
        response = await client.post(
            "/admin/reload", json={"bundle_dir": str(long_model)}
        )
        assert response.status_code == 409
        assert "SKIPREC_SESSION_MAX_EVENTS" in response.json()["error"]["message"]


async def test_watcher_reloads_a_bundle_replaced_in_place(
    make_client, make_settings, make_bundle, tiny_bundle_dir, tmp_path
):
    live = tmp_path / "live"
    shutil.copytree(tiny_bundle_dir, live)
    async with make_client(make_settings(bundle_dir=live, watch_bundle=0.05)) as client:
        before = await version_of(client)
        # A broken manifest is refused by the watcher; the old model keeps serving.
        (live / "manifest.json").write_text("{not json")
        await asyncio.sleep(0.3)
        assert await version_of(client) == before
        replacement = make_bundle(seed=2)
        for name in ("model.onnx", "vocab.json", "popularity.json", "manifest.json"):
            shutil.copy2(replacement / name, live / name)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if await version_of(client) != before:
                break
        assert await version_of(client) != before


async def wait_for_version(client, expected: str, polls: int = 100) -> str:
    version = await version_of(client)
    for _ in range(polls):
        if version == expected:
            break
        await asyncio.sleep(0.05)
        version = await version_of(client)
    return version


async def reloads(client, outcome: str) -> float:
    text = (await client.get("/metrics")).text
    prefix = f'skiprec_model_reloads_total{{outcome="{outcome}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


async def test_watcher_retries_a_refused_bundle_when_another_file_changes(
    make_client, make_settings, make_bundle, tiny_bundle_dir, tmp_path
):
    live = tmp_path / "live"
    shutil.copytree(tiny_bundle_dir, live)
    replacement = make_bundle(seed=3)
    expected = json.loads((replacement / "manifest.json").read_text())["model_version"]
    async with make_client(make_settings(bundle_dir=live, watch_bundle=0.05)) as client:
        before = await version_of(client)
        # The new manifest lands first, its model.onnx still half copied: refused.
        for name in ("vocab.json", "popularity.json", "manifest.json"):
            shutil.copy2(replacement / name, live / name)
        model = (replacement / "model.onnx").read_bytes()
        (live / "model.onnx").write_bytes(model[: len(model) // 2])
        for _ in range(100):
            if await reloads(client, "rejected") >= 1:
                break
            await asyncio.sleep(0.05)
        assert await reloads(client, "rejected") >= 1
        assert await version_of(client) == before
        # The copy finishes; the manifest itself does not change again.
        (live / "model.onnx").write_bytes(model)
        assert await wait_for_version(client, expected) == expected
        assert await reloads(client, "ok") == 1


async def test_watcher_leaves_an_unchanged_directory_alone(
    make_client, make_settings, tiny_bundle_dir, tmp_path
):
    live = tmp_path / "live"
    shutil.copytree(tiny_bundle_dir, live)
    async with make_client(make_settings(bundle_dir=live, watch_bundle=0.05)) as client:
        await asyncio.sleep(0.3)
        assert await reloads(client, "ok") == 0
        assert await reloads(client, "rejected") == 0


async def test_a_loaded_model_is_out_of_the_cyclic_collectors_generations(
    tiny_bundle_dir,
):
    """The model's per-track objects would make every full collection walk them
    (a pause of the event loop): loading freezes them."""
    import gc

    from service.inference import ModelHolder

    gc.unfreeze()
    holder = ModelHolder(tiny_bundle_dir, onnx_threads=1, session_max_events=200)
    await holder.reload()
    try:
        tracked = {id(o) for o in gc.get_objects()}
        assert gc.get_freeze_count() > 0
        assert id(holder.current.vocab.track_ids) not in tracked
    finally:
        gc.unfreeze()
