"""A/B variants: several bundles served at once, each listener assigned to one.

``SKIPREC_VARIANTS`` is a JSON object (or the path of a file holding one) of
``name -> {"bundle": directory | null, "share": fraction}``, e.g.
``{"control": {"bundle": "v1", "share": 0.45}, "treatment": {"bundle": "v2",
"share": 0.45}, "holdout": {"bundle": null, "share": 0.1}}``. A relative bundle
directory is taken from the bundle root (``SKIPREC_BUNDLE_ROOT``, default the folder
of ``SKIPREC_BUNDLE_DIR``), as ``POST /admin/reload`` takes it; ``null`` is a holdout
that is served the popularity list (it measures what the models add). Shares are
positive and sum to 1. Without the setting there is one variant, ``default``, on
``SKIPREC_BUNDLE_DIR``: exactly the single-bundle service.

Assignment is a hash, not a coin: ``blake2b(salt | user_id)`` read as a fraction in
[0, 1) falls into one variant's slice of the shares, in the order the variants are
listed. The same user gets the same variant in every worker and replica and after a
restart (sticky) as long as the salt, the names' order and the shares stay; a new
salt reshuffles everyone (a fresh experiment).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import InvalidRequest

if TYPE_CHECKING:
    from service.inference import LoadedModel, ModelHolder

DEFAULT_VARIANT = "default"
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
SHARE_TOLERANCE = 1e-6
_HASH_SPAN = float(1 << 64)


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """One variant as configured: its bundle directory (None: the holdout) and its
    share of the listeners."""

    name: str
    bundle_dir: Path | None
    share: float


def parse_variants(raw: str, bundle_root: Path) -> tuple[VariantSpec, ...]:
    """``SKIPREC_VARIANTS`` (JSON, or a path to a JSON file) -> the variants.

    Raises:
        ValueError: the message names the entry and the field to fix.
    """
    text = raw.strip()
    if not text.startswith("{"):
        path = Path(text)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(
                f"SKIPREC_VARIANTS: neither a JSON object nor a readable file "
                f"({path.name}: {exc.strerror})"
            ) from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"SKIPREC_VARIANTS: not valid JSON ({exc.msg})") from None
    if not isinstance(table, dict) or not table:
        raise ValueError(
            'SKIPREC_VARIANTS: a JSON object of name -> {"bundle", "share"} with at '
            "least one variant"
        )
    specs = tuple(_spec(name, entry, bundle_root) for name, entry in table.items())
    total = math.fsum(spec.share for spec in specs)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise ValueError(f"SKIPREC_VARIANTS: the shares sum to {total:g}, not 1")
    if all(spec.bundle_dir is None for spec in specs):
        raise ValueError("SKIPREC_VARIANTS: every variant is a holdout; give a bundle")
    return specs


def _spec(name: str, entry: Any, bundle_root: Path) -> VariantSpec:
    where = f"SKIPREC_VARIANTS.{name}"
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{where}: a name is 1-64 characters of [A-Za-z0-9._-]")
    if not isinstance(entry, dict) or set(entry) - {"bundle", "share"}:
        raise ValueError(f'{where}: expected {{"bundle": dir or null, "share": x}}')
    share = entry.get("share")
    if isinstance(share, bool) or not isinstance(share, int | float):
        raise ValueError(f"{where}.share: a number in (0, 1]")
    if not (math.isfinite(share) and 0.0 < share <= 1.0):
        raise ValueError(f"{where}.share: must be in (0, 1], got {share!r}")
    if "bundle" not in entry:
        raise ValueError(f"{where}.bundle: required (null for a holdout)")
    bundle = entry["bundle"]
    if bundle is None:
        return VariantSpec(name, None, float(share))
    if not isinstance(bundle, str) or not bundle:
        raise ValueError(f"{where}.bundle: a directory name or null")
    path = bundle_root / bundle
    if not path.is_dir():
        raise ValueError(f"{where}.bundle: {bundle!r} is not a directory")
    return VariantSpec(name, path, float(share))


def bucket(user_id: str, salt: str) -> float:
    """The user's point in [0, 1): uniform over users, fixed for a salt."""
    digest = hashlib.blake2b(f"{salt}|{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPAN


def assign(user_id: str, salt: str, specs: Sequence[VariantSpec]) -> int:
    """The index in ``specs`` of the user's variant."""
    point = bucket(user_id, salt)
    edge = 0.0
    for index, spec in enumerate(specs):
        edge += spec.share
        if point < edge:
            return index
    return len(specs) - 1  # shares that sum to 1 - rounding: the last one


@dataclass(frozen=True, slots=True)
class Variant:
    """A served variant: its models (None for the holdout)."""

    spec: VariantSpec
    models: ModelHolder | None

    @property
    def name(self) -> str:
        return self.spec.name


class Variants:
    """The served variants and who gets which."""

    def __init__(self, variants: Sequence[Variant], salt: str) -> None:
        self._variants = tuple(variants)
        self._by_name = {variant.name: variant for variant in self._variants}
        self.salt = salt
        self._specs = tuple(variant.spec for variant in self._variants)
        # The first variant with a bundle: probes report it, and the holdout
        # serves its popularity list.
        self.primary = next(v for v in self._variants if v.models is not None)

    def __iter__(self) -> Iterator[Variant]:
        return iter(self._variants)

    def for_user(self, user_id: str) -> Variant:
        return self._variants[assign(user_id, self.salt, self._specs)]

    def get(self, name: str) -> Variant:
        """The variant called ``name``; ``InvalidRequest`` naming ``variant``."""
        try:
            return self._by_name[name]
        except KeyError:
            names = ", ".join(self._by_name)
            raise InvalidRequest(
                f"variant: no variant {name!r} (served: {names})", "variant"
            ) from None

    def model(self, variant: Variant) -> LoadedModel:
        """The model that serves ``variant`` (the primary's for the holdout)."""
        holder = variant.models or self.primary.models
        assert holder is not None
        return holder.current
