"""Served lists and their outcomes: the Redis side of online evaluation.

Each ``GET /recommendations`` answer is a served list with a ``request_id``. After
the answer is sent, the list is kept in Redis with the user's session keys (one
hash slot; ``lua/keep_served.lua``), for ``SKIPREC_SERVED_TTL_S``, at most
``SERVED_LISTS_KEPT`` per user. The user's next event is attributed to the newest
waiting list, or to the list whose ``request_id`` the event names, by the append
script itself (``lua/append_events.lua``, the call that stores the event): the
next track's rank in it, played or skipped. Attributions are counted
per variant and model version in one Redis hash that every worker and replica
shares (``lua/count_outcomes.lua``, once per request id), read back by
``/metrics`` and ``GET /admin/experiments``; the arithmetic of the summary is
``skiprec.outcomes``, which the offline = online check shares.

Exactly once: an event attributes only when the append script of the same request
stored it (its dedup entry has this request's receive time), a list is attributed
once (its state names the event), and a retried event (a duplicate) reports the
attribution it made before, which ``count_outcomes.lua`` counts only if that
request id was never counted: a retry after a failed count completes it, and a
retry after a successful one changes nothing.

This module builds the commands and reads the replies; ``service.session_store``
sends them (it is the one module that talks to Redis).
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Literal

from service import keys
from skiprec.outcomes import Difference, Rate, Tally, difference, summarize

KEEP_SCRIPT = files("service").joinpath("lua/keep_served.lua").read_text()
KEEP_SCRIPT_SHA = hashlib.sha1(KEEP_SCRIPT.encode()).hexdigest()
COUNT_SCRIPT = files("service").joinpath("lua/count_outcomes.lua").read_text()
COUNT_SCRIPT_SHA = hashlib.sha1(COUNT_SCRIPT.encode()).hexdigest()
SCRIPTS = (KEEP_SCRIPT, COUNT_SCRIPT)

# Enough for a client that asks again (a page refresh) a few times before it
# sends the event that names the list it showed.
SERVED_LISTS_KEPT = 8
Answer = Literal["model", "fallback"]


@dataclass(frozen=True, slots=True)
class ServedList:
    """One answer of ``GET /recommendations`` as kept for its outcome."""

    request_id: str
    user_id: str
    variant: str
    model_version: str
    answer: Answer
    served_at: float  # the API's clock when it read the session
    track_ids: tuple[str, ...]

    def encode(self) -> str:
        """``|request_id|served_at|tracks|label`` (the script prepends the state);
        the label is last, so a model version may hold any character."""
        return "|".join(
            ("", self.request_id, repr(self.served_at), ",".join(self.track_ids))
            + (label(self.answer, self.variant, self.model_version),)
        )


def label(answer: str, variant: str, model_version: str) -> str:
    return f"{answer}|{variant}|{model_version}"


@dataclass(frozen=True, slots=True)
class Attribution:
    """A list's outcome: the next track's 0-based rank in it (None: not in it)."""

    request_id: str
    rank: int | None
    skipped: bool
    answer: Answer
    variant: str
    model_version: str

    @classmethod
    def decode(cls, text: str) -> Attribution:
        request_id, rank, code, answer, variant, version = text.split("|", 5)
        position = int(rank)
        return cls(
            request_id,
            position if position >= 0 else None,
            code == "s",
            "fallback" if answer == "fallback" else "model",
            variant,
            version,
        )


# Counter fields: "<counter>|<variant>|<model_version>".
SERVED = "served"
FALLBACKS = "fallbacks"


def field_name(counter: str, variant: str, model_version: str) -> str:
    return f"{counter}|{variant}|{model_version}"


def next_counter(answer: str, skipped: bool) -> str:
    """Lists of this answer followed by a play (``p``) or a skip (``s``)."""
    return f"{answer}:next:{'s' if skipped else 'p'}"


def hit_counter(answer: str, rank: int, skipped: bool) -> str:
    return f"{answer}:hit:{rank}:{'s' if skipped else 'p'}"


def keep_commands(served: ServedList, ttl_s: int) -> list[tuple[Any, ...]]:
    """The commands that keep a served list: the list (the user's slot), then its
    ``served`` (and ``fallbacks``) count (the counters' slot)."""
    arm = (served.variant, served.model_version)
    commands: list[tuple[Any, ...]] = [
        (
            "EVALSHA",
            KEEP_SCRIPT_SHA,
            2,
            keys.served_key(served.user_id),
            keys.dedup_key(served.user_id),
            served.encode(),
            keys.dedup_score(served.served_at),
            SERVED_LISTS_KEPT,
            ttl_s,
        ),
        ("HINCRBY", keys.OUTCOME_COUNTS_KEY, field_name(SERVED, *arm), 1),
    ]
    if served.answer == "fallback":
        commands.append(
            ("HINCRBY", keys.OUTCOME_COUNTS_KEY, field_name(FALLBACKS, *arm), 1)
        )
    return commands


def count_command(
    attributions: Iterable[Attribution], now: float, remember_s: int
) -> tuple[Any, ...]:
    args: list[str | int] = [repr(now), remember_s]
    for a in attributions:
        fields = [
            field_name(next_counter(a.answer, a.skipped), a.variant, a.model_version)
        ]
        if a.rank is not None:
            fields.append(
                field_name(
                    hit_counter(a.answer, a.rank, a.skipped), a.variant, a.model_version
                )
            )
        args += (a.request_id, len(fields), *fields)
    return (
        "EVALSHA",
        COUNT_SCRIPT_SHA,
        2,
        keys.OUTCOME_COUNTS_KEY,
        keys.COUNTED_KEY,
        *args,
    )


@dataclass
class ArmCounts:
    """The counters of one (variant, model version)."""

    served: int = 0
    fallbacks: int = 0
    tallies: dict[str, Tally] = field(default_factory=dict)  # answer -> outcomes

    def tally(self, answer: Answer) -> Tally:
        return self.tallies.get(answer, Tally())


def parse_counts(raw: Mapping[str, str]) -> dict[tuple[str, str], ArmCounts]:
    """The counters hash -> per ``(variant, model_version)``, sorted."""
    served: Counter[tuple[str, str]] = Counter()
    fallbacks: Counter[tuple[str, str]] = Counter()
    nexts: dict[tuple[str, str, str], Counter[bool]] = defaultdict(Counter)
    hits: dict[tuple[str, str, str], Counter[tuple[int, bool]]] = defaultdict(Counter)
    for name, value in raw.items():
        counter, variant, version = name.split("|", 2)
        arm, count = (variant, version), int(value)
        if counter == SERVED:
            served[arm] += count
        elif counter == FALLBACKS:
            fallbacks[arm] += count
        else:
            answer, kind, *rest = counter.split(":")
            if kind == "next":
                nexts[variant, version, answer][rest[0] == "s"] += count
            elif kind == "hit":
                hits[variant, version, answer][int(rest[0]), rest[1] == "s"] += count
    arms = {arm: ArmCounts(served[arm], fallbacks[arm]) for arm in served}
    for (variant, version, answer), by_skip in nexts.items():
        arm_counts = arms.setdefault((variant, version), ArmCounts())
        arm_counts.tallies[answer] = Tally(
            by_skip[False], by_skip[True], dict(hits[variant, version, answer])
        )
    return dict(sorted(arms.items()))


@dataclass(frozen=True, slots=True)
class ArmSummary:
    """One (variant, model version) of ``GET /admin/experiments``."""

    variant: str
    model_version: str
    counts: ArmCounts
    rates: dict[str, Rate]
    fallback_rates: dict[str, Rate]
    vs_control: dict[str, Difference] | None


def summarize_arms(
    counts: Mapping[tuple[str, str], ArmCounts],
    control: tuple[str, str] | None,
    k: int,
) -> list[ArmSummary]:
    """Each arm's rates over its model answers (and, apart, its fallback answers),
    and their differences from the ``control`` arm's when it has counts."""
    rates = {arm: summarize(c.tally("model"), k) for arm, c in counts.items()}
    base = rates.get(control) if control is not None else None
    return [
        ArmSummary(
            variant,
            version,
            arm_counts,
            rates[variant, version],
            summarize(arm_counts.tally("fallback"), k),
            None
            if base is None or (variant, version) == control
            else {
                name: difference(rate, base[name])
                for name, rate in rates[variant, version].items()
            },
        )
        for (variant, version), arm_counts in counts.items()
    ]
