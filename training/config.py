"""Training configuration: one frozen dataclass per table of the TOML presets.

A preset (``configs/*.toml``) has a ``[model]``, an ``[optim]`` and a ``[loss]`` table
(and optionally a ``[prior]`` one), and :class:`TrainConfig` holds one dataclass for
each: :class:`ModelSettings`, :class:`OptimConfig`, :class:`LossConfig`,
:class:`PriorConfig`. Every table checks itself when it is built:
each field against its annotation (``bool``/``int``/``float``/``str``, a ``Literal``'s
allowed values, and a :class:`Bound` written beside the field), then the rules that
tie two of its fields together. An unknown table or key, a key in the wrong table or a
value of the wrong type is a :class:`ConfigError` naming the table and the key.

CLI flags are applied on top with :meth:`TrainConfig.replace` at the entry point; a
field name is unique across the tables, so a flag names its field without its table.
A checkpoint stores :meth:`TrainConfig.to_dict` (the TOML's shape), and
:meth:`TrainConfig.from_checkpoint` also reads the flat dict that runs trained before
the config was nested stored.

    TrainConfig.from_toml(Path("training/configs/default.toml"))
"""

from __future__ import annotations

import dataclasses
import operator
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    get_args,
    get_origin,
    get_type_hints,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.toml"


class ConfigError(ValueError):
    """A preset file or an override that does not describe a valid training run."""


@dataclass(frozen=True)
class Bound:
    """Limits of a numeric field, written in its annotation.

    ``max_seq_len: Annotated[int, Bound(ge=1)]``; ``dropout: Annotated[float,
    Bound(ge=0, lt=1)]``.
    """

    ge: float | None = None
    gt: float | None = None
    lt: float | None = None

    def problem(self, value: float) -> str | None:
        """What is wrong with ``value``, or None when it is within the limits."""
        limits = [
            (limit, text, test)
            for limit, text, test in (
                (self.ge, ">=", operator.ge),
                (self.gt, ">", operator.gt),
                (self.lt, "<", operator.lt),
            )
            if limit is not None
        ]
        if all(test(value, limit) for limit, _, test in limits):
            return None
        stated = " and ".join(f"{text} {limit:g}" for limit, text, _ in limits)
        return f"must be {stated}, got {value!r}"


def _check(hint: Any, value: Any) -> tuple[Any, str | None]:
    """``value`` checked against a field annotation: (the value, a problem or None).

    An int is accepted for a float field and returned as a float (TOML writes ``1`` for
    ``1.0``); a bool is never an int.
    """
    bounds: tuple[Any, ...] = ()
    if get_origin(hint) is Annotated:
        hint, *extras = get_args(hint)
        bounds = tuple(extra for extra in extras if isinstance(extra, Bound))
    if get_origin(hint) is Literal:
        allowed = get_args(hint)
        if not isinstance(value, str) or value not in allowed:
            choices = ", ".join(repr(choice) for choice in allowed)
            return value, f"must be one of {choices}, got {value!r}"
        return value, None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint not in (bool, int, float, str):
        raise TypeError(
            f"config fields must be bool, int, float, str or Literal: {hint}"
        )
    if not isinstance(value, hint) or (isinstance(value, bool) and hint is not bool):
        return value, f"must be {hint.__name__}, got {type(value).__name__} {value!r}"
    for bound in bounds:
        problem = bound.problem(value)
        if problem:
            return value, problem
    return value, None


@dataclass(frozen=True)
class Table:
    """Base of the config tables: validates every field from its annotation on creation.

    A subclass is a frozen dataclass with a ``TABLE`` name; it overrides :meth:`rules`
    for checks that involve more than one field (run once every field is well typed).
    """

    TABLE: ClassVar[str]

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self), include_extras=True)
        problems = []
        for name in (f.name for f in fields(self)):
            value, problem = _check(hints[name], getattr(self, name))
            if problem:
                problems.append(f"{name} {problem}")
            else:
                object.__setattr__(self, name, value)  # an int given for a float
        if not problems:
            problems = list(self.rules())
        if problems:
            raise ConfigError(f"[{self.TABLE}] " + f"; [{self.TABLE}] ".join(problems))

    def rules(self) -> Iterator[str]:
        """Problems with combinations of fields (each field is already well typed)."""
        return iter(())


@dataclass(frozen=True)
class ModelSettings(Table):
    """The ``[model]`` table: the encoder's architecture, without the vocabulary size.

    ``training.model.ModelConfig`` adds ``num_items`` once the vocabulary is known.
    """

    TABLE: ClassVar[str] = "model"

    backbone: Literal["sasrec", "bert4rec"] = "sasrec"
    max_seq_len: Annotated[int, Bound(ge=1)] = 50
    hidden_dim: Annotated[int, Bound(ge=1)] = 64
    num_layers: Annotated[int, Bound(ge=1)] = 2
    num_heads: Annotated[int, Bound(ge=1)] = 2
    dropout: Annotated[float, Bound(ge=0, lt=1)] = 0.2
    feedback_input: bool = False  # add a play/skip embedding to each input position
    # Embed MSSD's graded skip level (skiprec.encoding.FEEDBACK_CODES) instead of
    # play/skip only; events without a grade keep the play/skip codes.
    graded_feedback: bool = False
    # Graded training: share of windows per epoch whose grades are coarsened to
    # play/skip, so sessions from clients that send no grades stay in distribution.
    binary_feedback_share: Annotated[float, Bound(ge=0, lt=1)] = 0.3
    # A per-candidate head p(skip | session, next = c), trained with
    # [loss] skip_head_weight; exported as the graph's p_skip outputs.
    skip_head: bool = False

    def rules(self) -> Iterator[str]:
        if self.hidden_dim % self.num_heads:
            yield "hidden_dim must be divisible by num_heads"
        if self.graded_feedback and not self.feedback_input:
            yield "graded_feedback needs feedback_input = true (it grades that input)"


@dataclass(frozen=True)
class OptimConfig(Table):
    """The ``[optim]`` table: optimiser, schedule, early stopping, seed and device."""

    TABLE: ClassVar[str] = "optim"

    epochs: Annotated[int, Bound(ge=1)] = 100
    batch_size: Annotated[int, Bound(ge=1)] = 256
    lr: Annotated[float, Bound(gt=0)] = 1e-3
    weight_decay: Annotated[float, Bound(ge=0)] = 0.0
    warmup_steps: Annotated[int, Bound(ge=0)] = 0
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: Annotated[float, Bound(ge=0)] = 1.0  # max global grad norm; 0 = off
    patience: Annotated[int, Bound(ge=1)] = 5  # evaluations without a better val NDCG
    eval_every: Annotated[int, Bound(ge=1)] = 1  # epochs between validations
    seed: int = 0
    device: str = "cpu"
    num_threads: Annotated[int, Bound(ge=0)] = 0  # torch.set_num_threads; 0 = all cores
    # Steps between two writes of the run's resume.pt (and one at each epoch's end),
    # from which `skiprec train --resume` continues a killed run; 0 = none.
    checkpoint_every: Annotated[int, Bound(ge=0)] = 0


@dataclass(frozen=True)
class LossConfig(Table):
    """The ``[loss]`` table: the main loss, its target and the skip-aware terms."""

    TABLE: ClassVar[str] = "loss"

    loss: Literal["full_softmax", "sampled_softmax"] = "full_softmax"
    num_negatives: Annotated[int, Bound(ge=1)] = 256  # shared negatives (sampled)
    # sampled softmax: the N shared negatives are drawn uniformly over the tracks or
    # in proportion to each track's training count (use with logq_correction);
    # in_batch_negatives: the other rows' targets compete too; logq_correction:
    # subtract log Q(c) (training.losses.sampled_softmax_loss) from the logits of
    # every sampled candidate, in-batch ones included
    negative_sampler: Literal["uniform", "popularity"] = "uniform"
    in_batch_negatives: bool = True
    logq_correction: bool = False
    # next: the next track; next_played: the first later track that was played;
    # played_only: the next track only where it was played (skipped next tracks
    # give no positive, and are the unlikelihood term's negatives)
    target: Literal["next", "next_played", "played_only"] = "next"
    skip_cl_weight: Annotated[float, Bound(ge=0)] = 0.0  # lambda; 0 = off
    skip_cl_temperature: Annotated[float, Bound(gt=0)] = 0.1
    skip_cl_anchor: Literal["output", "item_embedding"] = "output"
    # true: the authors' public code instead of the papers' formula (another
    # session's skips, zero-padded slots counted, mean over every slot; see
    # training.losses.authors_code_contrastive_loss); the two options below and the
    # BERT4Rec anchors then follow that code too.
    skip_cl_compat: bool = False
    # Drop a skipped negative that is the anchor's own positive (a track skipped
    # earlier and played later in the window: 15.7% of anchors on the MSSD dev
    # split), which asks the anchor to be near and far from the same embedding.
    skip_cl_mask_positive: bool = True
    # BERT4Rec with output anchors: anchors only at masked played positions, the
    # positive being the masked track itself (the position's own target; an unmasked
    # position sees that track in its input). SASRec ignores it.
    skip_cl_masked_anchors: bool = True
    unlikelihood_weight: Annotated[float, Bound(ge=0)] = 0.0
    skip_hard_negatives: bool = (
        False  # sampled softmax: the session's skips as negatives
    )
    mask_prob: Annotated[float, Bound(gt=0, lt=1)] = 0.2  # BERT4Rec masking rate
    # Train the unknown-track (OOV) embedding, which serving uses for every track
    # missing from the vocabulary: each epoch, replace this share of the input
    # occurrences of rare training tracks (training count <= oov_max_count) by OOV;
    # targets stay the true tracks. 0 = off (OOV is then never an input in training).
    oov_share: Annotated[float, Bound(ge=0)] = 0.0
    oov_max_count: Annotated[int, Bound(ge=1)] = 1
    # Weight of the skip head's BCE on the actual next track's skip; 0 = no head
    # (needs [model] skip_head = true when > 0).
    skip_head_weight: Annotated[float, Bound(ge=0)] = 0.0

    def rules(self) -> Iterator[str]:
        if self.oov_share > 1:
            yield f"oov_share must be <= 1, got {self.oov_share!r}"
        sampled_only = {
            "negative_sampler": self.negative_sampler != "uniform",
            "in_batch_negatives": not self.in_batch_negatives,
            "logq_correction": self.logq_correction,
        }
        for name, changed in sampled_only.items():
            if changed and self.loss != "sampled_softmax":
                yield f"{name} is a setting of loss = 'sampled_softmax'"
        if self.skip_hard_negatives and self.loss != "sampled_softmax":
            yield (
                "skip_hard_negatives needs loss = 'sampled_softmax' (the full softmax "
                "already ranks every track against the target)"
            )


@dataclass(frozen=True)
class PriorConfig(Table):
    """The ``[prior]`` table: the transition prior fitted after training
    (``training/prior.py``). Off by default, and in every run trained before it."""

    TABLE: ClassVar[str] = "prior"

    # fit last-track -> candidate counts on the training split and choose their
    # weights on validation; the run keeps the prior only when it helps there
    transition_prior: bool = False
    prior_successors: Annotated[int, Bound(ge=1)] = 64  # N: successors kept per track


@dataclass(frozen=True)
class TrainConfig:
    """A training run's whole configuration: one field per TOML table."""

    model: ModelSettings = field(default_factory=ModelSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)

    def __post_init__(self) -> None:
        # Rules across tables (each table has checked its own fields already).
        if self.model.skip_head != (self.loss.skip_head_weight > 0):
            raise ConfigError(
                "[model] skip_head and [loss] skip_head_weight go together: a skip "
                "head needs skip_head_weight > 0 to be trained, and a weight needs "
                f"the head (got skip_head = {str(self.model.skip_head).lower()}, "
                f"skip_head_weight = {self.loss.skip_head_weight:g})"
            )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with fields of any table changed by name; ``None`` (an unset flag) is
        ignored, an unknown name is a ConfigError."""
        changes = {key: value for key, value in changes.items() if value is not None}
        unknown = sorted(set(changes) - set(_table_of_key()))
        if unknown:
            raise ConfigError(f"unknown config keys: {unknown}")
        tables = {
            name: dataclasses.replace(
                getattr(self, name),
                **{k: v for k, v in changes.items() if _table_of_key()[k] == name},
            )
            for name in _tables()
        }
        return dataclasses.replace(self, **tables)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{table: {key: value}}``, the shape of a preset file."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, payload: Mapping[str, Any], source: str = "config"
    ) -> TrainConfig:
        """Build from ``{table: {key: value}}``; what is missing keeps its default."""
        tables: dict[str, Any] = {}
        for name, values in payload.items():
            if name not in _tables():
                home = _table_of_key().get(name)
                where = f"; {name} belongs in [{home}]" if home else ""
                raise ConfigError(
                    f"{source}: unknown config keys ['{name}'] at the top level (only "
                    f"the tables {', '.join(f'[{t}]' for t in _tables())}){where}"
                )
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: [{name}] must be a table")
            misplaced = [key for key in values if _table_of_key().get(key) != name]
            if misplaced:
                homes = [
                    f"{key} belongs in [{_table_of_key()[key]}]"
                    for key in misplaced
                    if key in _table_of_key()
                ]
                allowed = sorted(f.name for f in fields(_tables()[name]))
                raise ConfigError(
                    f"{source}: unknown keys in [{name}]: {misplaced} "
                    f"({'; '.join(homes) if homes else f'allowed: {allowed}'})"
                )
            try:
                tables[name] = _tables()[name](**values)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from exc
        try:
            return dataclasses.replace(cls(), **tables)
        except ConfigError as exc:  # a rule across tables
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_checkpoint(cls, payload: Mapping[str, Any]) -> TrainConfig:
        """The ``train_config`` a checkpoint stores: ``to_dict()``'s shape, or the flat
        ``{key: value}`` of runs trained before the config was nested."""
        if all(isinstance(value, Mapping) for value in payload.values()):
            return cls.from_dict(payload, source="checkpoint")
        nested: dict[str, dict[str, Any]] = {}
        for key, value in payload.items():
            if key not in _table_of_key():
                raise ConfigError(f"checkpoint: unknown config keys ['{key}']")
            nested.setdefault(_table_of_key()[key], {})[key] = value
        return cls.from_dict(nested, source="checkpoint")

    @classmethod
    def from_toml(cls, path: Path) -> TrainConfig:
        """Read a preset; ConfigError for a missing, malformed or invalid file."""
        try:
            payload = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: config file not found") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_dict(payload, source=str(path))


@cache
def _tables() -> dict[str, type[Table]]:
    """``{table name: its dataclass}``, read from TrainConfig's annotations."""
    return dict(get_type_hints(TrainConfig))


@cache
def _table_of_key() -> dict[str, str]:
    """``{key: the table it belongs to}``; a key may not appear in two tables."""
    owner: dict[str, str] = {}
    for name, table in _tables().items():
        for key in (f.name for f in fields(table)):
            if key in owner:
                raise TypeError(f"{key} is a field of both [{owner[key]}] and [{name}]")
            owner[key] = name
    return owner
