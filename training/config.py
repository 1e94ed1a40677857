"""Training configuration: one frozen dataclass, read from TOML presets in ``configs/``.

A preset groups its keys into ``[model]``, ``[optim]`` and ``[loss]`` tables for
readability; every key is a field of :class:`TrainConfig` and an unknown key, a key in
the wrong table or a value of the wrong type is refused with a :class:`ConfigError`.
CLI flags are applied on top with :meth:`TrainConfig.replace` at the entry point.

    TrainConfig.from_toml(Path("training/configs/default.toml"))
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from training.model import ModelConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.toml"

MODEL_KEYS = frozenset(
    {
        "backbone",
        "max_seq_len",
        "hidden_dim",
        "num_layers",
        "num_heads",
        "dropout",
        "feedback_input",
    }
)
OPTIM_KEYS = frozenset(
    {
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_steps",
        "schedule",
        "grad_clip",
        "patience",
        "eval_every",
        "seed",
        "device",
        "num_threads",
    }
)
LOSS_KEYS = frozenset(
    {
        "loss",
        "num_negatives",
        "target",
        "skip_cl_weight",
        "skip_cl_temperature",
        "skip_cl_anchor",
        "skip_cl_compat",
        "unlikelihood_weight",
        "skip_hard_negatives",
        "mask_prob",
    }
)
SECTIONS = {"model": MODEL_KEYS, "optim": OPTIM_KEYS, "loss": LOSS_KEYS}


class ConfigError(ValueError):
    """A preset file or an override that does not describe a valid training run."""


@dataclass(frozen=True)
class TrainConfig:
    # --- model (ModelConfig without num_items, which comes from the vocabulary) ---
    backbone: Literal["sasrec", "bert4rec"] = "sasrec"
    max_seq_len: int = 50
    hidden_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    feedback_input: bool = False
    # --- optimisation ---
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    patience: int = 5  # evaluations without a better validation NDCG@10
    eval_every: int = 1  # epochs between validations
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0  # torch.set_num_threads; 0 = all cores
    # --- loss ---
    loss: Literal["full_softmax", "sampled_softmax"] = "full_softmax"
    num_negatives: int = 256  # uniform negatives per batch (sampled softmax)
    # next: the next track; next_played: the first later track that was played;
    # played_only: the next track only where it was played (skipped next tracks
    # give no positive, and are the unlikelihood term's negatives)
    target: Literal["next", "next_played", "played_only"] = "next"
    skip_cl_weight: float = 0.0  # lambda of the skip contrastive term; 0 = off
    skip_cl_temperature: float = 0.1
    skip_cl_anchor: Literal["output", "item_embedding"] = "output"
    skip_cl_compat: bool = False
    unlikelihood_weight: float = 0.0
    skip_hard_negatives: bool = (
        False  # sampled softmax: the session's skips as negatives
    )
    mask_prob: float = 0.2  # BERT4Rec masking rate

    def __post_init__(self) -> None:
        checks = [
            (self.backbone in ("sasrec", "bert4rec"), "backbone: sasrec|bert4rec"),
            (self.max_seq_len >= 1, "max_seq_len must be >= 1"),
            (
                self.hidden_dim >= 1 and self.num_heads >= 1,
                "hidden_dim, num_heads >= 1",
            ),
            (self.hidden_dim % self.num_heads == 0, "hidden_dim % num_heads must be 0"),
            (self.num_layers >= 1, "num_layers must be >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.schedule in ("constant", "cosine"), "schedule: constant|cosine"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.eval_every >= 1, "eval_every must be >= 1"),
            (self.num_threads >= 0, "num_threads must be >= 0"),
            (
                self.loss in ("full_softmax", "sampled_softmax"),
                "loss: full_softmax|sampled_softmax",
            ),
            (self.num_negatives >= 1, "num_negatives must be >= 1"),
            (
                self.target in ("next", "next_played", "played_only"),
                "target: next|next_played|played_only",
            ),
            (self.skip_cl_weight >= 0, "skip_cl_weight must be >= 0"),
            (self.skip_cl_temperature > 0, "skip_cl_temperature must be > 0"),
            (
                self.skip_cl_anchor in ("output", "item_embedding"),
                "skip_cl_anchor: output|item_embedding",
            ),
            (self.unlikelihood_weight >= 0, "unlikelihood_weight must be >= 0"),
            (
                not self.skip_hard_negatives or self.loss == "sampled_softmax",
                "skip_hard_negatives needs loss = 'sampled_softmax' (the full softmax "
                "already ranks every track against the target)",
            ),
            (0.0 < self.mask_prob < 1.0, "mask_prob must be in (0, 1)"),
        ]
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise ConfigError("invalid training config: " + "; ".join(errors))

    def model_config(self, num_items: int) -> ModelConfig:
        """The model's config for ``num_items`` vocabulary rows (specials included)."""
        return ModelConfig(
            num_items=num_items,
            backbone=self.backbone,
            max_seq_len=self.max_seq_len,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            dropout=self.dropout,
            feedback_input=self.feedback_input,
        )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed; ``None`` (an unset flag) is ignored."""
        changes = {key: value for key, value in changes.items() if value is not None}
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a flat or sectioned mapping, checking names and value types."""
        flat: dict[str, Any] = {}
        for key, value in payload.items():
            if key in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"{source}: [{key}] must be a table")
                misplaced = set(value) - SECTIONS[key]
                if misplaced:
                    raise ConfigError(
                        f"{source}: unknown keys in [{key}]: {sorted(misplaced)} "
                        f"(allowed: {sorted(SECTIONS[key])})"
                    )
                flat.update(value)
            else:
                flat[key] = value
        types = {f.name: f.default for f in fields(cls)}
        unknown = set(flat) - set(types)
        if unknown:
            raise ConfigError(f"{source}: unknown config keys {sorted(unknown)}")
        for key, value in flat.items():
            expected = type(types[key])
            # TOML writes 1 for 1.0; an int is a fine float, a bool is not an int.
            ok = isinstance(value, expected) and not (
                isinstance(value, bool) and expected is not bool
            )
            if (
                expected is float
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                flat[key] = float(value)
                ok = True
            if not ok:
                raise ConfigError(
                    f"{source}: {key} must be {expected.__name__}, "
                    f"got {type(value).__name__} {value!r}"
                )
        try:
            return cls(**flat)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

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
