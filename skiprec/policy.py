"""The session policy: what happens to tracks heard earlier in the session.

Skipped-earlier and played-earlier tracks each get a rule:

- ``exclude``: never recommended again in this session;
- ``penalize``: its score drops by a fixed penalty (in the model's log-score units,
  so ``penalty = log 2`` halves its odds), chosen on validation sessions;
- ``none``: ranked as any other track.

A track both skipped and played earlier takes both rules: excluded if either
excludes, otherwise both penalties. The default is no rule at all: the rules that
exclude cost accuracy when measured (docs/RESULTS.md), and a run records the policy
chosen on its validation sessions, which its bundle serves.

Serving applies the policy to the live session
(``service/recommend.py``) and offline evaluation to every history
(``training/evaluation.py``), so an offline figure is the figure of the policy the
service runs. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

K = TypeVar("K", bound=Hashable)
Rule = Literal["exclude", "penalize", "none"]
RULES: tuple[Rule, ...] = get_args(Rule)


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """One rule (and penalty) for skipped-earlier, one for played-earlier tracks."""

    skipped: Rule = "none"
    played: Rule = "none"
    skipped_penalty: float = 0.0
    played_penalty: float = 0.0

    def __post_init__(self) -> None:
        for name in ("skipped", "played"):
            rule = getattr(self, name)
            if rule not in RULES:
                raise ValueError(f"{name}: rule must be one of {RULES}, got {rule!r}")
            penalty = getattr(self, f"{name}_penalty")
            if not (math.isfinite(penalty) and penalty >= 0.0):
                raise ValueError(f"{name}_penalty must be finite and >= 0")

    def to_dict(self) -> dict[str, str | float]:
        return {
            "skipped": self.skipped,
            "played": self.played,
            "skipped_penalty": self.skipped_penalty,
            "played_penalty": self.played_penalty,
        }

    def rule(self, skipped: bool) -> Rule:
        return self.skipped if skipped else self.played

    def penalty(self, skipped: bool) -> float:
        if self.rule(skipped) != "penalize":
            return 0.0
        return self.skipped_penalty if skipped else self.played_penalty

    def excluded(self, events: Iterable[tuple[K, bool]]) -> set[K]:
        """The distinct tracks of ``(track, skipped)`` events the policy removes."""
        return {track for track, skipped in events if self.rule(skipped) == "exclude"}

    def penalties(self, events: Iterable[tuple[K, bool]]) -> dict[K, float]:
        """Per penalised track, what to subtract from its score (excluded ones left
        out: they are not ranked at all)."""
        kinds: dict[K, set[bool]] = {}
        for track, skipped in events:
            kinds.setdefault(track, set()).add(skipped)
        out: dict[K, float] = {}
        for track, seen in kinds.items():
            if any(self.rule(skipped) == "exclude" for skipped in seen):
                continue
            total = sum(self.penalty(skipped) for skipped in seen)
            if total > 0.0:
                out[track] = total
        return out
