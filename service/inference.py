"""The model side of serving: a loaded bundle, hot reload, and the micro-batcher.

- ``LoadedModel.infer`` (sync, CPU) encodes a batch of live sessions with
  ``skiprec.encoding`` (the code training and evaluation use), runs the graph once and
  decodes the top-k. The excluded tracks of each request (the policy decided them,
  see ``service/recommend.py``) go into the graph's ``exclude_ids`` input, so the
  graph's top-K already skips them and k results come back whenever the catalogue
  has k other tracks. A bundle with an ANN index ranks small batches in two stages
  and batches of at least ``exact_from`` requests over the whole catalogue: a
  whole-catalogue call streams the item table once per batch, however many
  sessions it scores, while the ANN search costs the same for every session, so past
  some batch size the exact call is the cheaper one (and exact). That size is
  measured on this machine when the bundle loads (``calibrate_exact_from``) unless
  ``SKIPREC_EXACT_MIN_BATCH`` sets it.
- ``ModelHolder`` keeps the serving model; ``reload`` validates a new bundle
  completely (manifest, hashes, graph signature, one smoke inference) off the event
  loop and swaps the reference atomically; a bad bundle raises ``BundleRejected`` and
  the old model keeps serving.
- ``MicroBatcher`` coalesces concurrent requests into one ONNX call: whatever queued
  while the previous call ran goes into the next one (no timer, so a lone request
  waits for nothing). Each request carries the model it was read for, so a reload
  between reading a session and ranking it never pairs one model's window with
  another's graph. Inference runs on one dedicated thread, never on the event loop.
  The queue is bounded (past it, ``Overloaded``: shed, not queued for seconds); a
  failing ONNX call fails its batch with ``InferenceFailed`` (the recommender falls
  back); a worker that dies fails whatever waits, is not ``alive`` (readiness) and
  restarts after ``restart_delay_s``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import (
    BundleRejected,
    InferenceFailed,
    ModelUnavailable,
    Overloaded,
)
from service.metrics import Metrics
from skiprec.bundle import (
    Bundle,
    BundleError,
    load_bundle,
    open_inference_session,
    open_retrieval,
)
from skiprec.encoding import (
    EncodingSpec,
    encode_exclusions,
    encode_sessions,
    feedback_code,
)
from skiprec.manifest import (
    INPUT_CANDIDATES,
    INPUT_EXCLUDE,
    INPUT_FEEDBACK,
    INPUT_ITEM_IDS,
    OUTPUT_NAMES,
)
from skiprec.policy import SessionPolicy
from skiprec.retrieval import Retrieval
from skiprec.vocab import NUM_SPECIAL

logger = logging.getLogger(__name__)

# A worker that keeps dying is restarted at most once a second (and logs each death).
WORKER_RESTART_DELAY_S = 1.0
# ``exact_from`` when whole-catalogue scoring never pays (or there is no index).
NEVER = 1 << 30
# The calibration: batches of these sizes through both paths, the fastest of this
# many timed calls each (after one untimed), sessions of the window's length.
CALIBRATION_BATCHES = (1, 8)
CALIBRATION_CALLS = 9
# A lone request is ranked on the event loop (MicroBatcher) only when its model
# step is at most this long: other requests of the worker wait for it, and this
# bounds their wait to a fifth of the 10 ms p99 the service aims at; a step that
# long costs far more than the thread hand-off it saves.
INLINE_MAX_STEP_S = 0.002


@dataclass(frozen=True, slots=True)
class RankedTrack:
    """One ranked track: its score, and P(skip) when the model has a skip head."""

    track_id: str
    score: float
    p_skip: float | None = None


RankedItems = list[RankedTrack]


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One live session to rank for: its events oldest first, the tracks not to rank
    and the ``(track_id, penalty)`` to subtract from penalised tracks' scores."""

    track_ids: tuple[str, ...]
    skipped: tuple[bool, ...]
    k: int
    excluded: tuple[str, ...] = ()
    penalties: tuple[tuple[str, float], ...] = ()
    levels: tuple[int | None, ...] = ()  # per event; () = no grades sent
    # Client-supplied tracks (distinct) to rank instead of the catalogue's top-k;
    # ``k`` is then their number.
    candidates: tuple[str, ...] = ()


def crossover_batch(
    sizes: tuple[int, int], exact_s: Sequence[float], two_stage_s: Sequence[float]
) -> int:
    """The smallest batch size from which a call of the whole-catalogue path costs
    no more than one of the two stages, from each path's seconds per call at two
    batch sizes: a call costs a fixed part plus a part per session, a straight line
    through the two points. ``NEVER`` when the two stages cost less at every size."""
    small, large = sizes
    slope_exact = (exact_s[1] - exact_s[0]) / (large - small)
    slope_two = (two_stage_s[1] - two_stage_s[0]) / (large - small)
    fixed_exact = exact_s[0] - slope_exact * small
    fixed_two = two_stage_s[0] - slope_two * small
    saved_per_session = slope_two - slope_exact
    if saved_per_session <= 0:
        return NEVER
    return max(1, math.ceil((fixed_exact - fixed_two) / saved_per_session))


class LoadedModel:
    """A validated bundle with its open ONNX Runtime session."""

    def __init__(
        self, bundle: Bundle, session: Any, retrieval: Retrieval | None = None
    ) -> None:
        # The bundle itself is not kept: its model bytes are now ORT's.
        self.session = session
        # Two-stage path (ANN candidates, exact scoring of them) when the bundle
        # has one: the exporter built it because the catalogue is large; batches of
        # ``exact_from`` requests or more score the whole catalogue instead (``load``
        # sets it, and releases ``session`` when that is never).
        self.retrieval = retrieval
        self.exact_from = NEVER
        # The fastest batch-1 model step, measured at load (``load``).
        self.lone_step_s = math.inf
        self.vocab = bundle.vocab
        self.spec: EncodingSpec = bundle.manifest.encoding_spec()
        self.model_version = bundle.manifest.model_version
        self.top_k = bundle.manifest.top_k
        self.skip_head = bundle.manifest.skip_head
        recorded = bundle.manifest.policy
        self.policy = recorded.session_policy() if recorded else SessionPolicy()
        total = sum(bundle.popularity.values()) or 1
        ranked = sorted(bundle.popularity.items(), key=lambda kv: (-kv[1], kv[0]))
        self.popular: RankedItems = [
            RankedTrack(track_id, count / total) for track_id, count in ranked
        ]
        # Each known track's share of plays by vocabulary index: an array, as a
        # dict of the whole catalogue would cost a large catalogue's memory.
        rows = np.asarray(self.vocab.indices(bundle.popularity), dtype=np.int64)
        counts = np.fromiter(bundle.popularity.values(), np.float64, len(rows))
        known = rows >= NUM_SPECIAL
        self._popularity_share = np.zeros(self.vocab.size)
        self._popularity_share[rows[known]] = counts[known] / total

    def popularity_shares(self, track_ids: Sequence[str]) -> list[float]:
        """Each known track's share of plays (0 for one never played)."""
        shares: list[float] = self._popularity_share[
            self.vocab.indices(track_ids)
        ].tolist()
        return shares

    @classmethod
    def load(
        cls,
        path: Path,
        onnx_threads: int,
        two_stage: bool = True,
        exact_from: int | None = None,
    ) -> LoadedModel:
        """Load, verify and smoke-test a bundle; raises ``BundleError``.

        ``two_stage=False`` scores the whole catalogue even when the bundle has an
        ANN index (``SKIPREC_RETRIEVAL=exact``); the index files are still verified.
        ``exact_from``: the batch size from which a two-stage bundle scores the whole
        catalogue; ``None`` measures it (``calibrate_exact_from``).
        """
        bundle = load_bundle(path)
        session = open_inference_session(bundle, intra_op_threads=onnx_threads)
        retrieval = (
            open_retrieval(bundle, intra_op_threads=onnx_threads) if two_stage else None
        )
        model = cls(bundle, session, retrieval)
        model.smoke_test()
        if retrieval is not None:
            model.exact_from = (
                model.calibrate_exact_from() if exact_from is None else exact_from
            )
            logger.info(
                "%s: two stages below %s requests a batch, the whole catalogue from it",
                model.model_version,
                model.exact_from if model.exact_from < NEVER else "any number of",
            )
            if model.exact_from >= NEVER:
                # Never run again once smoke-tested and timed, and its copies of
                # the item table are a large catalogue's largest part of memory.
                model.session = None
        model.lone_step_s = model.time_lone_step()
        return model

    def calibrate_exact_from(self) -> int:
        """``crossover_batch`` of the two paths as timed here, on sessions of the
        window's length (a cost measured on this machine, not on the exporter's)."""
        retrieval = self.retrieval
        assert retrieval is not None
        rng = np.random.default_rng(0)
        exact_s, two_stage_s = [], []
        for size in CALIBRATION_BATCHES:
            batch = [self._random_session(rng) for _ in range(size)]
            exact, two_stage = self._fastest_calls_s(batch)
            exact_s.append(exact)
            two_stage_s.append(two_stage)
        return crossover_batch(CALIBRATION_BATCHES, exact_s, two_stage_s)

    def time_lone_step(self) -> float:
        """Seconds of the fastest of ``CALIBRATION_CALLS`` batch-1 model steps
        (after one untimed), through the path a batch of one takes."""
        request = self._random_session(np.random.default_rng(0))
        timings = []
        for call in range(CALIBRATION_CALLS + 1):
            started = time.perf_counter()
            self.infer([request])
            if call:
                timings.append(time.perf_counter() - started)
        return min(timings)

    def _random_session(self, rng: np.random.Generator) -> InferenceRequest:
        """Random tracks, as many as the window holds, all played."""
        tracks = self.vocab.track_ids
        length = self.spec.max_seq_len
        picked = tuple(tracks[i] for i in rng.integers(0, len(tracks), length))
        return InferenceRequest(picked, (False,) * length, 10)

    def _fastest_calls_s(self, batch: list[InferenceRequest]) -> tuple[float, float]:
        """Seconds of each path's fastest call on ``batch``. Other work on the
        machine (the other workers load their bundles at the same moment) only ever
        adds time, so the fastest call is the path's own cost, and the calls
        alternate so that neither path gets the quieter moments."""
        timings: dict[bool, list[float]] = {True: [], False: []}
        for call in range(CALIBRATION_CALLS + 1):
            for exact in (True, False):
                started = time.perf_counter()
                self._run(batch, exact=exact)
                if call:  # the first call of each warms its path up
                    timings[exact].append(time.perf_counter() - started)
        return min(timings[True]), min(timings[False])

    def smoke_test(self) -> None:
        """One inference on a one-event session, through each path the bundle
        serves: shapes, dtypes and index range."""
        first = self.vocab.track_ids[0] if self.vocab.num_tracks else "?"
        k = min(self.top_k, max(1, self.vocab.num_tracks - 1))
        request = InferenceRequest((first,), (True,), k, (first,))
        self._check_smoke(self._run([request], exact=True), exact=True)
        if self.retrieval is not None:
            self._check_smoke(self._run([request], exact=False), exact=False)

    def _check_smoke(self, outputs: list[Any], exact: bool) -> None:
        indices, scores = np.asarray(outputs[0]), np.asarray(outputs[1])
        if exact and (
            indices.shape != (1, self.top_k) or scores.shape != (1, self.top_k)
        ):
            raise BundleRejected(
                f"smoke inference returned shapes {indices.shape}/{scores.shape}, "
                f"expected (1, {self.top_k})"
            )
        valid = indices[np.isfinite(scores)]
        if valid.size and (valid.min() < NUM_SPECIAL or valid.max() >= self.vocab.size):
            raise BundleRejected("smoke inference ranked a special or unknown index")

    def _run(
        self, requests: Sequence[InferenceRequest], exact: bool | None = None
    ) -> list[Any]:
        """The graph's five outputs (``OUTPUT_NAMES`` order) for a batch; through
        the two-stage path, per row: the ANN candidates best first (for the first
        three) and the request's candidates in its order (for the last two).
        ``exact``: the whole-catalogue graph or the two stages; ``None``: by the
        batch's size (``exact_from``)."""
        histories: list[list[tuple[int, int]]] = []
        exclusions: list[list[int]] = []
        indices_of = self.vocab.indices
        for request in requests:
            levels = request.levels or (None,) * len(request.track_ids)
            codes = (
                feedback_code(skipped, level, graded=self.spec.graded)
                for skipped, level in zip(request.skipped, levels, strict=True)
            )
            items = indices_of(request.track_ids)
            histories.append(list(zip(items, codes, strict=True)))
            excluded = {i for i in indices_of(request.excluded) if i >= NUM_SPECIAL}
            exclusions.append(sorted(excluded))
        item_ids, feedback = encode_sessions(histories, self.spec)
        # Candidates (PAD-filled; an unknown track is OOV, which scores -inf).
        candidates = [indices_of(request.candidates) for request in requests]
        exclude_ids = encode_exclusions(exclusions)
        if exact is None:
            exact = self.retrieval is None or len(requests) >= self.exact_from
        if not exact:
            return self._two_stage(
                requests, item_ids, feedback, exclude_ids, candidates
            )
        outputs: list[Any] = self.session.run(
            list(OUTPUT_NAMES),
            {
                INPUT_ITEM_IDS: item_ids,
                INPUT_FEEDBACK: feedback,
                INPUT_EXCLUDE: exclude_ids,
                INPUT_CANDIDATES: encode_exclusions(candidates),
            },
        )
        return outputs

    def _two_stage(
        self,
        requests: Sequence[InferenceRequest],
        item_ids: np.ndarray,
        feedback: np.ndarray,
        exclude_ids: np.ndarray,
        candidates: list[list[int]],
    ) -> list[Any]:
        """``_run`` through ``skiprec.retrieval``: one query graph, one ANN search
        and one candidates graph for the whole batch."""
        retrieval = self.retrieval
        assert retrieval is not None
        query, successors = retrieval.encode(item_ids, feedback)
        found = retrieval.candidates(
            query, item_ids, successors, exclude_ids, self._width(requests, item_ids)
        )
        rows = [
            given if request.candidates else [i for i in found[row].tolist() if i]
            for row, (request, given) in enumerate(
                zip(requests, candidates, strict=True)
            )
        ]
        candidate_ids = encode_exclusions(rows)
        scores, p_skip = retrieval.score(
            query, item_ids, feedback, exclude_ids, candidate_ids
        )
        order = np.argsort(-scores, axis=1, kind="stable")  # best first; PAD last
        return [
            np.take_along_axis(candidate_ids, order, axis=1),
            np.take_along_axis(scores, order, axis=1),
            np.take_along_axis(p_skip, order, axis=1),
            scores,
            p_skip,
        ]

    def _width(self, requests: Sequence[InferenceRequest], item_ids: np.ndarray) -> int:
        """The most tracks a request of the batch needs the ANN hits to rank, which
        sets the search's depth: its k, plus its penalised tracks outside the
        encoded window (a penalty moves a track down, letting the next one up; a
        window track is a candidate whatever the search finds). A request with its
        own candidates needs none."""
        width = 0
        for row, request in enumerate(requests):
            if request.candidates:
                continue
            outside = 0
            if request.penalties:
                window = set(item_ids[row].tolist())
                penalised = self.vocab.indices(t for t, _ in request.penalties)
                outside = sum(
                    index >= NUM_SPECIAL and index not in window for index in penalised
                )
            width = max(width, request.k + outside)
        return width

    def infer(self, requests: Sequence[InferenceRequest]) -> list[RankedItems]:
        """Per request, best first (sync; CPU-bound): the top-k of the catalogue, or
        its candidates that can be ranked (known, not excluded).

        Penalties re-rank the graph's top-K: a penalised track only moves down, so
        the top-k is exact whenever at most K - k penalised tracks were in the top-K.
        Candidates are exact: each has its own score. Through the two-stage path
        every retrieved candidate is scored, so penalties re-rank all of them.
        """
        indices, scores, p_skip, candidate_scores, candidate_p_skip = self._run(
            requests
        )
        track_ids = self.vocab.track_ids
        results: list[RankedItems] = []
        for row, request in enumerate(requests):
            if request.candidates:
                rows = zip(
                    self.vocab.indices(request.candidates),
                    candidate_scores[row].tolist(),
                    candidate_p_skip[row].tolist(),
                    strict=False,  # the row is padded to the batch's widest
                )
            else:
                # Rows come best first (unrankable ones, at -inf, last) and a
                # penalty only moves a track down, so the top-k after penalties is
                # among the first k + (number of penalties): decode no more.
                width = request.k + len(request.penalties)
                rows = zip(
                    indices[row, :width].tolist(),
                    scores[row, :width].tolist(),
                    p_skip[row, :width].tolist(),
                    strict=True,
                )
            ranked = [
                (index, score, skip)
                for index, score, skip in rows
                if index >= NUM_SPECIAL and math.isfinite(score)
            ]
            if request.penalties:
                penalty_of = dict(
                    zip(
                        self.vocab.indices(t for t, _ in request.penalties),
                        (p for _, p in request.penalties),
                        strict=True,
                    )
                )
                ranked = [(i, s - penalty_of.get(i, 0.0), q) for i, s, q in ranked]
            if request.penalties or request.candidates:
                ranked.sort(key=lambda item: -item[1])  # stable: ties keep order
            ranked = ranked[: request.k]
            results.append(
                [
                    RankedTrack(
                        track_ids[i - NUM_SPECIAL],
                        s,
                        q if self.skip_head and math.isfinite(q) else None,
                    )
                    for i, s, q in ranked
                ]
            )
        return results


def _public_message(exc: BundleError, bundle_dir: Path) -> str:
    """The bundle error without the server's directory layout (names only)."""
    message = str(exc).replace(str(exc.path), exc.path.name)
    return message.replace(str(bundle_dir), bundle_dir.name)


class ModelHolder:
    """The serving model and its atomic replacement."""

    def __init__(
        self,
        bundle_dir: Path,
        onnx_threads: int,
        session_max_events: int,
        two_stage: bool = True,
        exact_from: int | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.onnx_threads = onnx_threads
        self.session_max_events = session_max_events
        self.two_stage = two_stage
        self.exact_from = exact_from  # None: measured at each load
        self._model: LoadedModel | None = None
        self._lock = asyncio.Lock()

    @property
    def current(self) -> LoadedModel:
        if self._model is None:
            raise ModelUnavailable("no model bundle is loaded")
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    async def reload(self, bundle_dir: Path | None = None) -> tuple[str, str]:
        """Load ``bundle_dir`` (default: the configured one) and swap it in.

        Returns ``(new_version, previous_version)``; raises ``BundleRejected``.
        """
        path = Path(bundle_dir) if bundle_dir is not None else self.bundle_dir
        async with self._lock:
            try:
                model = await asyncio.to_thread(
                    LoadedModel.load,
                    path,
                    self.onnx_threads,
                    self.two_stage,
                    self.exact_from,
                )
            except BundleError as exc:
                logger.warning("bundle rejected: %s", exc)
                raise BundleRejected(
                    _public_message(exc, path), field="bundle_dir"
                ) from exc
            except BundleRejected:
                logger.warning("bundle rejected by the smoke inference: %s", path)
                raise
            except Exception as exc:  # ORT raises untyped errors on a broken graph
                logger.warning("bundle rejected: %s: %s", path, exc)
                raise BundleRejected(
                    f"smoke inference failed ({type(exc).__name__})", field="bundle_dir"
                ) from exc
            if model.spec.max_seq_len > self.session_max_events:
                raise BundleRejected(
                    f"the model reads {model.spec.max_seq_len} events but sessions "
                    f"keep {self.session_max_events}; raise SKIPREC_SESSION_MAX_EVENTS",
                    field="bundle_dir",
                )
            previous = self._model.model_version if self._model else ""
            self._model = model
            self.bundle_dir = path
            # A model holds a Python object per track (vocabulary, popularity):
            # 160k objects at 100k tracks, whose every full collection the cyclic
            # GC would walk, pausing the event loop ~50 ms each time (longer than
            # the Redis read deadline). They live as long as the model; freezing
            # moves them out of the collector's generations (refcounting still
            # frees them after a reload).
            gc.freeze()
        logger.info(
            "model loaded",
            extra={"model_version": model.model_version, "previous": previous},
        )
        return model.model_version, previous


@dataclass(slots=True)
class _Pending:
    model: LoadedModel
    request: InferenceRequest
    future: asyncio.Future[RankedItems]


class MicroBatcher:
    """Coalesce concurrent inference requests into one ONNX call at a time.

    The calls run in one inference thread, so that the event loop serves other
    requests meanwhile. With ``inline``, a request its caller says is alone (no
    other ranking under way in the worker) is ranked in the caller's thread when
    the batcher is idle and its model's batch-1 step is short
    (``INLINE_MAX_STEP_S``): there is no batch it could join, and handing it to an
    idle thread and back costs two wake-ups (docs/BENCHMARKS.md, "Inline when
    alone"). While it runs the loop waits, as the request itself would.
    """

    def __init__(
        self, max_batch: int, max_queue: int, metrics: Metrics, inline: bool = False
    ) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.inline = inline
        self.restart_delay_s = WORKER_RESTART_DELAY_S
        self._metrics = metrics
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self._in_flight: list[_Pending] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx")
        self._task: asyncio.Task[None] | None = None
        self._restart: asyncio.TimerHandle | None = None
        self._stopping = False

    @property
    def alive(self) -> bool:
        """Whether the worker task is running (false while it waits for a restart)."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._restart = None
        self._task = asyncio.create_task(self._run(), name="skiprec-micro-batcher")
        self._task.add_done_callback(self._worker_exited)

    async def stop(self) -> None:
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def _worker_exited(self, task: asyncio.Task[None]) -> None:
        """The watchdog: the loop never returns, so anything but ``stop`` ending it
        is a bug; fail what waits (nothing would answer it) and start again later."""
        if self._stopping:
            return
        error = None if task.cancelled() else task.exception()
        logger.error(
            "inference worker died; restarting in %.1f s",
            self.restart_delay_s,
            exc_info=error,
        )
        self._metrics.inference_restarts.inc()
        waiting = self._in_flight
        self._in_flight = []
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(
                    ModelUnavailable("inference worker restarting; retry")
                )
        self._restart = task.get_loop().call_later(self.restart_delay_s, self.start)

    async def rank(
        self, model: LoadedModel, request: InferenceRequest, alone: bool = False
    ) -> RankedItems:
        """The ranked items of one session, by ``model``; ``alone``: no other
        request of the worker is being ranked (see the class).

        Raises:
            Overloaded: ``max_queue`` requests are already waiting.
            ModelUnavailable: the worker is dead (restarting).
            InferenceFailed: the batch's ONNX call raised.
        """
        if not self.alive:
            raise ModelUnavailable("inference worker restarting; retry")
        if (
            alone
            and self.inline
            and model.lone_step_s <= INLINE_MAX_STEP_S
            and self._queue.empty()
            and not self._in_flight
        ):
            self._metrics.inference_inline.inc()
            try:
                (ranked,) = model.infer([request])
            except Exception as exc:
                raise InferenceFailed(self._failed(exc, 1)) from exc
            self._metrics.inference_batch.observe(1)
            return ranked
        future: asyncio.Future[RankedItems] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(model, request, future))
        except asyncio.QueueFull:
            self._metrics.inference_shed.inc()
            raise Overloaded(
                f"{self.max_queue} requests already wait for inference; retry"
            ) from None
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._in_flight = batch
            by_model: dict[int, list[_Pending]] = {}
            for pending in batch:
                if not pending.future.done():
                    by_model.setdefault(id(pending.model), []).append(pending)
            for group in by_model.values():  # more than one only across a reload
                await self._infer(loop, group)
            self._in_flight = []

    async def _infer(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]
    ) -> None:
        model = batch[0].model
        try:
            results = await loop.run_in_executor(
                self._executor, model.infer, [p.request for p in batch]
            )
        except Exception as exc:
            message = self._failed(exc, len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(InferenceFailed(message))
            return
        self._metrics.inference_batch.observe(len(batch))
        for pending, ranked in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(ranked)

    def _failed(self, exc: Exception, size: int) -> str:
        """Log a batch whose ONNX call raised, once: each of its requests only says
        it fell back, with the message returned."""
        logger.exception("inference failed for a batch of %d", size, exc_info=exc)
        self._metrics.inference_errors.inc()
        return f"inference failed ({type(exc).__name__})"
