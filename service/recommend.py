"""The recommendation domain: one call from a listener to a ranked list.

``Recommender.recommend`` owns every decision of ``GET /recommendations``: it takes
the serving model once (its window and its graph belong to the same bundle, even
across a reload), reads that window of the current session from the store, applies
the session policy (``skiprec.policy``) to the whole session, ranks through the
micro-batcher, and falls back to popularity when there is no session or no
reachable store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from service.errors import SessionStoreUnavailable
from service.inference import (
    InferenceRequest,
    LoadedModel,
    MicroBatcher,
    ModelHolder,
    RankedItems,
)
from service.metrics import Metrics
from service.schemas import FallbackReason
from service.session_store import SessionStore, SessionWindow
from skiprec.policy import SessionPolicy


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    """What a client asks: ``exclude_played`` None means the service's policy;
    True excludes played-earlier tracks, False never excludes them."""

    user_id: str
    k: int
    now: float
    exclude_played: bool | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    user_id: str
    model_version: str
    items: RankedItems
    fallback_reason: FallbackReason


class Recommender:
    """Ranks the next tracks of a listener's live session."""

    def __init__(
        self,
        store: SessionStore,
        models: ModelHolder,
        batcher: MicroBatcher,
        metrics: Metrics,
        policy: Callable[[SessionPolicy], SessionPolicy],
    ) -> None:
        self.store = store
        self.models = models
        self.batcher = batcher
        self.metrics = metrics
        self.policy = policy  # the bundle's policy -> the one served (settings)

    def policy_for(
        self, request: RecommendRequest, model: LoadedModel
    ) -> SessionPolicy:
        policy = self.policy(model.policy)
        if request.exclude_played is None:
            return policy
        if request.exclude_played:
            return replace(policy, played="exclude")
        if policy.played == "exclude":
            return replace(policy, played="none")
        return policy

    async def recommend(self, request: RecommendRequest) -> Recommendation:
        model = self.models.current  # once: a reload mid-request changes nothing
        reason: FallbackReason = "none"
        window = SessionWindow()
        try:
            window = await self.store.read_window(
                request.user_id, request.now, model.spec.max_seq_len
            )
        except SessionStoreUnavailable:
            reason = "store-unavailable"
        if not window.track_ids:
            reason = "cold-start" if reason == "none" else reason
            self.metrics.fallbacks.labels(reason=reason).inc()
            popular = model.popular[: request.k]
            return Recommendation(request.user_id, model.model_version, popular, reason)
        policy = self.policy_for(request, model)
        events = window.events()
        ranked = await self.batcher.rank(
            model,
            InferenceRequest(
                window.track_ids,
                window.skipped,
                request.k,
                tuple(sorted(policy.excluded(events))),
                tuple(sorted(policy.penalties(events).items())),
                window.levels,
            ),
        )
        return Recommendation(request.user_id, model.model_version, ranked, reason)
