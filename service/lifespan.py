"""Startup and shutdown: open every long-lived resource before serving, close it after.

Startup refuses a bad bundle, of any variant (the process exits with the bundle's
error), but not an unreachable Redis: it warns with a countdown, and the store loads
its script on the first request that reaches Redis, so the API recovers when Redis
comes back. Each variant has its own ``ModelHolder`` and, with
``SKIPREC_WATCH_BUNDLE``, its own watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fastapi import FastAPI

from service.errors import BundleRejected, SessionStoreUnavailable
from service.inference import MicroBatcher, ModelHolder
from service.ingest import EventTimeBounds, Ingest
from service.metrics import Metrics
from service.recommend import Recommender
from service.redis_client import RedisHandle, open_redis
from service.session_store import SessionStore, StoreConfig
from service.settings import Settings, get_settings, session_policy
from service.variants import Variant, Variants

logger = logging.getLogger(__name__)

STARTUP_REDIS_ATTEMPTS = 3


@dataclass
class ServiceState:
    """What handlers reach through ``service.deps``."""

    settings: Settings
    metrics: Metrics
    store: SessionStore
    models: ModelHolder  # the primary variant's (probes report it)
    batcher: MicroBatcher
    recommender: Recommender
    ingest: Ingest
    redis: RedisHandle
    variants: Variants


async def _register_with_retries(store: SessionStore) -> None:
    for attempt in range(STARTUP_REDIS_ATTEMPTS, 0, -1):
        try:
            await store.register()
            return
        except SessionStoreUnavailable:
            logger.warning("redis not reachable; %d retries remaining", attempt - 1)
            if attempt > 1:
                await asyncio.sleep(0.5)
    logger.warning("starting without redis: events answer 503 until it is back")


BundleSignature = tuple[str, tuple[tuple[str, int, int], ...]]


def bundle_signature(bundle_dir: Path) -> BundleSignature | None:
    """The directory's real path and every file's (name, size, mtime); None when the
    directory cannot be listed.

    Every file counts, not only manifest.json: a manifest refused because a file it
    lists was still being copied is retried as soon as that file changes. The real
    path makes a moved ``current`` link a change even when the files look the same.
    """
    try:
        with os.scandir(bundle_dir) as entries:
            files = []
            for entry in entries:
                stat = entry.stat()  # of the file a link points to
                files.append((entry.name, stat.st_size, stat.st_mtime_ns))
    except OSError:
        return None
    return os.path.realpath(bundle_dir), tuple(sorted(files))


async def watch_bundle(
    metrics: Metrics,
    variant: str,
    models: ModelHolder,
    interval_s: float,
    seen: BundleSignature | None,
) -> None:
    """Reload when any file of the bundle directory changes on disk (``seen``: the
    signature taken before the serving bundle was loaded); keep serving on refusal."""
    while True:
        await asyncio.sleep(interval_s)
        current = bundle_signature(models.bundle_dir)
        if current is None or current == seen:
            continue
        # Taken before the load: a file changing while it loads is seen next poll.
        seen = current
        try:
            version, _ = await models.reload(models.bundle_dir)
        except BundleRejected as exc:
            metrics.reloads.labels(outcome="rejected").inc()
            logger.warning("watched bundle of %s refused: %s", variant, exc.message)
            continue
        metrics.reloads.labels(outcome="ok").inc()
        metrics.set_model_version(version, variant)


async def _load_variants(
    settings: Settings, metrics: Metrics
) -> tuple[Variants, dict[str, BundleSignature | None]]:
    """Every variant's bundle loaded (a refusal stops startup), and the signatures
    its watcher starts from."""
    variants: list[Variant] = []
    signatures: dict[str, BundleSignature | None] = {}
    for spec in settings.variant_specs():
        if spec.bundle_dir is None:
            variants.append(Variant(spec, None))
            continue
        models = ModelHolder(
            spec.bundle_dir,
            settings.onnx_threads,
            settings.session_max_events,
            two_stage=settings.retrieval == "auto",
            exact_from=settings.exact_min_batch,
        )
        signatures[spec.name] = bundle_signature(spec.bundle_dir)
        version, _ = await models.reload()
        metrics.set_model_version(version, spec.name)
        variants.append(Variant(spec, models))
    return Variants(variants, settings.variant_salt), signatures


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = getattr(app.state, "settings", None) or get_settings()
    metrics: Metrics = app.state.metrics
    variants, signatures = await _load_variants(settings, metrics)
    models = variants.primary.models
    assert models is not None

    redis = open_redis(settings)
    store = SessionStore(
        redis.client,
        StoreConfig(
            session_gap_s=settings.session_gap_s,
            session_max_events=settings.session_max_events,
            session_ttl_s=settings.session_ttl_s,
            dedup_ttl_s=settings.dedup_ttl_s,
            stream_maxlen=settings.stream_maxlen,
            read_timeout_s=settings.redis_timeout_s,
            served_ttl_s=settings.served_ttl_s,
            cross_slot=bool(settings.redis_cross_slot),
        ),
        read_client=redis.read_client,
    )
    await _register_with_retries(store)
    batcher = MicroBatcher(
        settings.max_inference_batch,
        settings.max_inference_queue,
        metrics,
        inline=settings.inline_inference,
    )
    batcher.start()
    recommender = Recommender(
        store, variants, batcher, metrics, partial(session_policy, settings)
    )
    ingest = Ingest(
        store,
        metrics,
        EventTimeBounds(settings.max_clock_skew_s, settings.max_lateness_s),
        settings.max_batch,
        settings.max_body_bytes,
    )
    state = ServiceState(
        settings, metrics, store, models, batcher, recommender, ingest, redis, variants
    )
    app.state.skiprec = state
    watchers = [
        asyncio.create_task(
            watch_bundle(
                metrics,
                variant.name,
                variant.models,
                settings.watch_bundle,
                signatures[variant.name],
            )
        )
        for variant in variants
        if variant.models is not None and settings.watch_bundle > 0
    ]
    logger.info(
        "service ready",
        extra={"model_version": models.current.model_version},
    )
    try:
        yield
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await batcher.stop()
        await store.drain()
        await redis.close()
        logger.info("service stopped")
