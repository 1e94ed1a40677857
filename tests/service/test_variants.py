"""A/B variants on a real Redis: the table is refused at startup when wrong, users
are assigned by a salted hash (sticky, in proportion to the shares), each variant
serves and reloads its own bundle, and the holdout gets the popularity list."""

from __future__ import annotations

import asyncio
import json
import math
import shutil

import pytest
from pydantic import ValidationError

from service.variants import VariantSpec, assign, parse_variants
from tests.service.conftest import serving


def table(**variants: tuple[object, float]) -> str:
    return json.dumps(
        {
            name: {"bundle": bundle, "share": share}
            for name, (bundle, share) in variants.items()
        }
    )


def users_of(variant: str, specs, salt: str = "skiprec", count: int = 3) -> list[str]:
    names = [spec.name for spec in specs]
    found = [
        f"user{i}"
        for i in range(1000)
        if names[assign(f"user{i}", salt, specs)] == variant
    ]
    return found[:count]


@pytest.fixture
def two_bundles(tiny_bundle_dir, make_bundle):
    return tiny_bundle_dir, make_bundle(seed=1)


@pytest.fixture
def ab_settings(make_settings, two_bundles, tmp_path_factory):
    a, b = two_bundles

    def factory(**overrides):
        variants = table(a=(str(a), 0.4), b=(str(b), 0.4), holdout=(None, 0.2))
        return make_settings(
            variants=variants, bundle_root=tmp_path_factory.getbasetemp(), **overrides
        )

    return factory


@pytest.mark.parametrize(
    ("variants", "words"),
    [
        ("{nope", "not valid JSON"),
        ("/no/such/variants.json", "neither a JSON object nor a readable file"),
        ("{}", "at least one variant"),
        (table(a=("BUNDLE", 0.5), b=("BUNDLE", 0.4)), "the shares sum to 0.9, not 1"),
        (table(**{"a b": ("BUNDLE", 1.0)}), "SKIPREC_VARIANTS.a b: a name is"),
        (table(a=("BUNDLE", 0.0), b=("BUNDLE", 1.0)), "SKIPREC_VARIANTS.a.share"),
        (table(a=("missing-dir", 1.0)), "SKIPREC_VARIANTS.a.bundle: 'missing-dir'"),
        (table(a=(None, 1.0)), "every variant is a holdout"),
        (json.dumps({"a": {"bundle": "BUNDLE", "share": 1, "x": 1}}), "expected"),
    ],
)
def test_a_wrong_variant_table_is_refused_naming_the_field(
    make_settings, tiny_bundle_dir, variants, words
):
    with pytest.raises(ValidationError) as caught:
        make_settings(variants=variants.replace("BUNDLE", tiny_bundle_dir.name))
    assert words in str(caught.value)


def test_variants_may_come_from_a_file(make_settings, tiny_bundle_dir, tmp_path):
    path = tmp_path / "variants.json"
    path.write_text(table(a=(tiny_bundle_dir.name, 0.7), off=(None, 0.3)))
    specs = make_settings(variants=str(path)).variant_specs()
    assert specs == (
        VariantSpec("a", tiny_bundle_dir, 0.7),
        VariantSpec("off", None, 0.3),
    )


def test_without_variants_one_default_variant_serves_the_bundle(
    make_settings, tiny_bundle_dir
):
    assert make_settings().variant_specs() == (
        VariantSpec("default", tiny_bundle_dir, 1.0),
    )


def test_assignment_is_sticky_and_follows_the_shares(tmp_path):
    for name in "abc":
        (tmp_path / name).mkdir()
    specs = parse_variants(table(a=("a", 0.5), b=("b", 0.3), c=("c", 0.2)), tmp_path)
    users = [f"listener-{i}" for i in range(10_000)]
    first = [assign(user, "s1", specs) for user in users]
    assert first == [assign(user, "s1", specs) for user in users]  # sticky
    for index, spec in enumerate(specs):
        n, p = len(users), spec.share
        # Within 4 binomial standard deviations (a false alarm once in ~16,000).
        assert abs(first.count(index) - n * p) < 4 * math.sqrt(n * p * (1 - p))
    # Another salt is another experiment: users are reshuffled, shares still hold.
    other = [assign(user, "s2", specs) for user in users]
    moved = sum(x != y for x, y in zip(first, other, strict=True))
    expected_moved = 1 - sum(s.share**2 for s in specs)  # independent draws
    assert abs(moved / len(users) - expected_moved) < 0.03


async def test_each_variant_serves_its_own_bundle_and_the_holdout_popularity(
    ab_settings,
):
    settings = ab_settings()
    specs = settings.variant_specs()
    async with serving(settings) as (state, client):
        versions = {
            v.name: state.variants.model(v).model_version for v in state.variants
        }
        assert versions["a"] != versions["b"]
        popular = [
            t.track_id for t in state.variants.model(state.variants.primary).popular
        ]
        for name in ("a", "b", "holdout"):
            for user in users_of(name, specs):
                await client.post(
                    "/events", json={"user_id": user, "track_id": "t1", "type": "play"}
                )
                answers = [
                    (await client.get(f"/recommendations/{user}")).json()
                    for _ in range(2)
                ]
                assert {a["variant"] for a in answers} == {name}  # sticky
                answer = answers[0]
                assert answer["model_version"] == versions[name]
                assert answer["fallback"] is False
                if name == "holdout":
                    assert [i["track_id"] for i in answer["items"]] == popular[:10]
                ranked = await client.post(
                    f"/recommendations/{user}/rank", json={"candidates": ["t1", "t2"]}
                )
                assert ranked.json()["variant"] == name
        arms = (await client.get("/admin/experiments")).json()
    assert arms["control"] == "a"
    by_variant = {arm["variant"]: arm for arm in arms["arms"]}
    assert {name: arm["served"] for name, arm in by_variant.items()} == {
        "a": 6,
        "b": 6,
        "holdout": 6,
    }
    assert by_variant["a"]["vs_control"] is None
    assert set(by_variant["b"]["vs_control"]) == {
        "hit",
        "hit_played",
        "hit_skipped",
        "next_skipped",
    }


async def test_each_variant_reloads_on_its_own(ab_settings, make_bundle):
    async with serving(ab_settings()) as (state, client):
        before = {v.name: state.variants.model(v).model_version for v in state.variants}
        other = make_bundle(seed=2)
        response = await client.post(
            "/admin/reload", json={"variant": "b", "bundle_dir": str(other)}
        )
        assert response.status_code == 200, response.text
        assert response.json()["variant"] == "b"
        assert response.json()["previous_version"] == before["b"]
        after = {v.name: state.variants.model(v).model_version for v in state.variants}
        assert after["a"] == before["a"] and after["b"] != before["b"]
        metrics = (await client.get("/metrics")).text
        assert (
            f'skiprec_model_info{{model_version="{after["b"]}",variant="b"}} 1.0'
            in (metrics)
        )
        for body, words in [
            ({}, "variant: required when SKIPREC_VARIANTS is set"),
            ({"variant": "holdout"}, "is a holdout"),
            ({"variant": "nope"}, "no variant 'nope'"),
        ]:
            refused = await client.post("/admin/reload", json=body)
            assert refused.status_code == 422
            assert refused.json()["error"]["field"] == "variant"
            assert words in refused.json()["error"]["message"]
        # Without a bundle_dir, the variant's configured bundle is loaded again.
        again = await client.post("/admin/reload", json={"variant": "b"})
        assert again.json()["model_version"] == before["b"]


async def test_the_watcher_reloads_each_variant_on_its_own(
    make_settings, two_bundles, make_bundle, tmp_path
):
    live = {name: tmp_path / name for name in ("a", "b")}
    for name, bundle in zip(live, two_bundles, strict=True):
        shutil.copytree(bundle, live[name])
    settings = make_settings(
        variants=table(a=("a", 0.5), b=("b", 0.5)),
        bundle_root=tmp_path,
        watch_bundle=0.05,
    )
    async with serving(settings) as (state, _):
        model = {v.name: v for v in state.variants}
        before = {n: state.variants.model(v).model_version for n, v in model.items()}
        replacement = make_bundle(seed=3)
        for name in ("model.onnx", "vocab.json", "popularity.json", "manifest.json"):
            shutil.copy2(replacement / name, live["b"] / name)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if state.variants.model(model["b"]).model_version != before["b"]:
                break
        assert state.variants.model(model["b"]).model_version != before["b"]
        assert state.variants.model(model["a"]).model_version == before["a"]
