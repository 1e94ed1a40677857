"""The recommendation domain: one call from a listener to a ranked list.

``Recommender.recommend`` owns every decision of ``GET /recommendations``: it finds
the listener's variant (``service.variants``), takes that variant's serving model
once (its window and its graph belong to the same bundle, even across a reload),
reads that window of the current session from the store, applies the session
policy (``skiprec.policy``) to the whole session, ranks through the micro-batcher,
and falls back to popularity when there is no session, no reachable store, or the
batch's ONNX call failed. A holdout variant gets the popularity list whatever
its session (its answers are flagged as fallbacks when a model's would be: no
session, no store, so every arm's outcomes cover the same requests). ``k`` is
checked against the bundle's top-K before anything else, so the model and the
fallback accept the same requests. Every answer gets a
``request_id``; ``keep`` stores it for its outcome once the answer is sent
(``service.outcomes``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

from service.errors import InferenceFailed, InvalidRequest, SessionStoreUnavailable
from service.inference import (
    InferenceRequest,
    LoadedModel,
    MicroBatcher,
    RankedItems,
    RankedTrack,
)
from service.metrics import Metrics
from service.outcomes import ServedList
from service.schemas import FallbackReason
from service.session_store import SessionStore, SessionWindow
from service.variants import Variants
from skiprec.policy import SessionPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    """What a client asks: ``exclude_played`` None means the service's policy;
    True excludes played-earlier tracks, False never excludes them."""

    user_id: str
    k: int
    now: float
    exclude_played: bool | None = None


@dataclass(frozen=True, slots=True)
class RankRequest:
    """Candidate tracks to rank for a listener (``exclude_played`` as above)."""

    user_id: str
    candidates: tuple[str, ...]
    now: float
    exclude_played: bool | None = None


@dataclass(frozen=True, slots=True)
class Unranked:
    track_id: str
    reason: Literal["unknown", "excluded"]


@dataclass(frozen=True, slots=True)
class RankedCandidates:
    user_id: str
    model_version: str
    variant: str
    items: RankedItems
    unranked: list[Unranked]
    fallback_reason: FallbackReason


@dataclass(frozen=True, slots=True)
class Recommendation:
    user_id: str
    model_version: str
    variant: str
    request_id: str
    served_at: float  # the request's clock, when the session was read
    items: RankedItems
    fallback_reason: FallbackReason

    def served(self) -> ServedList:
        return ServedList(
            self.request_id,
            self.user_id,
            self.variant,
            self.model_version,
            "model" if self.fallback_reason == "none" else "fallback",
            self.served_at,
            tuple(item.track_id for item in self.items),
        )


class Recommender:
    """Ranks the next tracks of a listener's live session."""

    def __init__(
        self,
        store: SessionStore,
        variants: Variants,
        batcher: MicroBatcher,
        metrics: Metrics,
        policy: Callable[[SessionPolicy], SessionPolicy],
    ) -> None:
        self.store = store
        self.variants = variants
        self.batcher = batcher
        self.metrics = metrics
        self.policy = policy  # the bundle's policy -> the one served (settings)
        # Requests inside recommend/rank_candidates: one alone may be ranked
        # without the batcher's thread (MicroBatcher.rank).
        self._ranking = 0

    def policy_for(
        self, request: RecommendRequest | RankRequest, model: LoadedModel
    ) -> SessionPolicy:
        policy = self.policy(model.policy)
        if request.exclude_played is None:
            return policy
        if request.exclude_played:
            return replace(policy, played="exclude")
        if policy.played == "exclude":
            return replace(policy, played="none")
        return policy

    def _fallback(self, reason: FallbackReason) -> FallbackReason:
        self.metrics.fallbacks.labels(reason=reason).inc()
        return reason

    async def _window(
        self, model: LoadedModel, user_id: str, now: float
    ) -> tuple[SessionWindow, FallbackReason]:
        """The session window the model reads, or why there is none."""
        try:
            window = await self.store.read_window(user_id, now, model.spec.max_seq_len)
        except SessionStoreUnavailable:
            return SessionWindow(), self._fallback("store-unavailable")
        if not window.track_ids:
            return window, self._fallback("cold-start")
        return window, "none"

    def _inference(
        self, window: SessionWindow, policy: SessionPolicy, k: int
    ) -> InferenceRequest:
        """The session as the model ranks it, with the policy's exclusions and
        penalties computed once."""
        events = window.events()
        return InferenceRequest(
            window.track_ids,
            window.skipped,
            k,
            tuple(sorted(policy.excluded(events))),
            tuple(sorted(policy.penalties(events).items())),
            window.levels,
        )

    async def recommend(self, request: RecommendRequest) -> Recommendation:
        self._ranking += 1
        try:
            return await self._recommend(request)
        finally:
            self._ranking -= 1

    async def _recommend(self, request: RecommendRequest) -> Recommendation:
        variant = self.variants.for_user(request.user_id)
        # Once: a reload mid-request changes nothing.
        model = self.variants.model(variant)
        if request.k > model.top_k:  # the graph ranks no more; the fallback neither
            raise InvalidRequest(
                f"k: at most {model.top_k} (the top_k of model "
                f"{model.model_version}), got {request.k}",
                "k",
            )
        answer = partial(
            Recommendation,
            request.user_id,
            model.model_version,
            variant.name,
            uuid.uuid4().hex,
            request.now,
        )
        window, reason = await self._window(model, request.user_id, request.now)
        if reason == "none" and variant.models is not None:  # not the holdout
            policy = self.policy_for(request, model)
            try:
                session = self._inference(window, policy, request.k)
                ranked = await self.batcher.rank(model, session, self._ranking == 1)
            except InferenceFailed:  # the batcher logged it, once per batch
                reason = self._fallback("model-error")
            else:
                return answer(ranked, reason)
        return answer(model.popular[: request.k], reason)

    async def keep(self, answer: Recommendation) -> None:
        """Keep a sent answer for its outcome; runs after the response is sent, so
        a failure costs one outcome, never the answer."""
        try:
            await self.store.keep_served(answer.served())
        except SessionStoreUnavailable as exc:
            self.metrics.served_list_errors.inc()
            logger.debug("served list not kept: %s", exc.message)

    async def rank_candidates(self, request: RankRequest) -> RankedCandidates:
        """The client's candidate tracks for this listener, best first, and those
        that cannot be ranked (unknown to the model, or excluded by the policy)."""
        self._ranking += 1
        try:
            return await self._rank_candidates(request)
        finally:
            self._ranking -= 1

    async def _rank_candidates(self, request: RankRequest) -> RankedCandidates:
        variant = self.variants.for_user(request.user_id)
        model = self.variants.model(variant)
        candidates = tuple(dict.fromkeys(request.candidates))  # first occurrences
        unknown = [t for t in candidates if t not in model.vocab]
        known = tuple(t for t in candidates if t in model.vocab)
        unranked = [Unranked(t, "unknown") for t in unknown]
        window, reason = await self._window(model, request.user_id, request.now)
        if reason != "none" or variant.models is None:
            items = self._by_popularity(model, known)
            return RankedCandidates(
                request.user_id,
                model.model_version,
                variant.name,
                items,
                unranked,
                reason,
            )
        session = self._inference(window, self.policy_for(request, model), 0)
        excluded = set(session.excluded)
        unranked += [Unranked(t, "excluded") for t in known if t in excluded]
        to_rank = tuple(t for t in known if t not in excluded)
        try:
            items = (
                await self.batcher.rank(
                    model,
                    replace(session, k=len(to_rank), candidates=to_rank),
                    self._ranking == 1,
                )
                if to_rank
                else []
            )
        except InferenceFailed:  # the batcher logged it, once per batch
            items = self._by_popularity(model, to_rank)
            reason = self._fallback("model-error")
        return RankedCandidates(
            request.user_id, model.model_version, variant.name, items, unranked, reason
        )

    @staticmethod
    def _by_popularity(model: LoadedModel, tracks: tuple[str, ...]) -> RankedItems:
        shares = model.popularity_shares(tracks)
        return sorted(
            (RankedTrack(t, share) for t, share in zip(tracks, shares, strict=True)),
            key=lambda item: -item.score,
        )
