"""TrainConfig: presets, the checkpoint round trip, old flat checkpoints, refusals."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from skiprec.vocab import Vocabulary
from training.checkpoint import Run, load_run, save_run
from training.config import CONFIG_DIR, ConfigError, TrainConfig
from training.model import ModelConfig, SessionEncoder

PRESETS = sorted(CONFIG_DIR.glob("*.toml"))

# The train_config of a checkpoint written before the config was nested (the run
# behind docs/RESULTS.md's sasrec+both row): one flat dict.
FLAT_BEFORE = {
    "backbone": "sasrec",
    "max_seq_len": 50,
    "hidden_dim": 64,
    "num_layers": 2,
    "num_heads": 2,
    "dropout": 0.1,
    "feedback_input": True,
    "epochs": 12,
    "batch_size": 256,
    "lr": 0.003,
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "schedule": "constant",
    "grad_clip": 1.0,
    "patience": 5,
    "eval_every": 1,
    "seed": 0,
    "device": "cpu",
    "num_threads": 0,
    "loss": "full_softmax",
    "num_negatives": 256,
    "target": "next",
    "skip_cl_weight": 0.5,
    "skip_cl_temperature": 0.1,
    "skip_cl_anchor": "output",
    "skip_cl_compat": False,
    "unlikelihood_weight": 0.0,
    "skip_hard_negatives": False,
    "mask_prob": 0.2,
}


def _values(config: TrainConfig) -> dict[tuple[str, str], object]:
    """``{(table, key): value}`` of every field."""
    return {
        (table, f.name): getattr(getattr(config, table), f.name)
        for table in ("model", "optim", "loss", "prior")
        for f in fields(getattr(config, table))
    }


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"default", "demo", "tiny"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_sets_exactly_what_its_file_says(preset: Path):
    stated = {
        (table, key): value
        for table, values in tomllib.loads(preset.read_text()).items()
        for key, value in values.items()
    }
    config = _values(TrainConfig.from_toml(preset))
    defaults = _values(TrainConfig())
    assert set(stated) <= set(config)  # no key of the file is dropped or misplaced
    for name, value in config.items():
        assert value == stated.get(name, defaults[name]), name
        assert type(value) is type(defaults[name]), name
    changed = {name for name in config if config[name] != defaults[name]}
    assert changed == {
        name for name, value in stated.items() if value != defaults[name]
    }
    assert changed, f"{preset.name} is the defaults"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_round_trips_through_a_checkpoint(preset: Path, tmp_path: Path):
    config = TrainConfig.from_toml(preset)
    vocab = Vocabulary.build(["t1", "t2"])
    model = SessionEncoder(ModelConfig.for_vocab(config.model, vocab.size))
    save_run(Run(model, vocab, {}, train_config=config.to_dict()), tmp_path)
    run = load_run(tmp_path)
    assert run.train_config == config.to_dict()
    assert TrainConfig.from_checkpoint(run.train_config) == config
    assert run.model.config == ModelConfig.for_vocab(config.model, vocab.size)


def test_a_flat_checkpoint_config_of_an_older_run_loads():
    config = TrainConfig.from_checkpoint(FLAT_BEFORE)
    flat = {key: value for (_, key), value in _values(config).items()}
    assert {key: flat[key] for key in FLAT_BEFORE} == FLAT_BEFORE
    # Fields added since (graded feedback, the skip head) keep their defaults.
    defaults = {key: value for (_, key), value in _values(TrainConfig()).items()}
    assert {key: flat[key] for key in set(flat) - set(FLAT_BEFORE)} == {
        key: defaults[key] for key in set(flat) - set(FLAT_BEFORE)
    }
    assert (config.optim.epochs, config.loss.skip_cl_weight) == (12, 0.5)
    with pytest.raises(ConfigError, match=r"unknown config keys \['note'\]"):
        TrainConfig.from_checkpoint({"seed": 0, "note": "not a training run"})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[model]\nhidden_dim = 'big'\n", r"\[model\] hidden_dim must be int, got str"),
        (
            "[model]\nlr = 0.1\n",
            r"unknown keys in \[model\]: \['lr'\] \(lr belongs in \[optim",
        ),
        (
            "[model]\nhidden = 3\n",
            r"unknown keys in \[model\]: \['hidden'\] \(allowed: ",
        ),
        ("epochz = 3\n", r"unknown config keys \['epochz'\] at the top level"),
        ("epochs = 3\n", r"epochs belongs in \[optim\]"),
        ("model = 3\n", r"\[model\] must be a table"),
        (
            "[model]\nbackbone = 'gru'\n",
            r"\[model\] backbone must be one of 'sasrec', ",
        ),
        ("[optim]\nepochs = 0\n", r"\[optim\] epochs must be >= 1, got 0"),
        ("[optim]\nepochs = true\n", r"\[optim\] epochs must be int, got bool True"),
        (
            "[model]\ndropout = 1.0\n",
            r"\[model\] dropout must be >= 0 and < 1, got 1.0",
        ),
        (
            "[model]\nhidden_dim = 10\nnum_heads = 3\n",
            r"\[model\] hidden_dim must be div",
        ),
        ("[loss]\nskip_hard_negatives = true\n", r"\[loss\] skip_hard_negatives needs"),
        (
            "[loss]\nlogq_correction = true\n",
            r"\[loss\] logq_correction is a setting of loss = 'sampled_softmax'",
        ),
        (
            "[loss]\nnegative_sampler = 'popularity'\n",
            r"\[loss\] negative_sampler is a setting of loss = 'sampled_softmax'",
        ),
        (
            "[model]\ngraded_feedback = true\nfeedback_input = false\n",
            r"\[model\] graded_feedback needs feedback_input = true",
        ),
        (
            "[model]\nbinary_feedback_share = 1.0\n",
            r"\[model\] binary_feedback_share must be >= 0 and < 1",
        ),
        ("[model]\nskip_head = true\n", r"skip_head and \[loss\] skip_head_weight go"),
        ("[loss]\nskip_head_weight = 0.5\n", r"got skip_head = false, skip_head_weigh"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_bad_config_is_refused_naming_table_and_key(tmp_path: Path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as refused:
        TrainConfig.from_toml(path)
    assert str(refused.value).startswith(str(path))


def test_an_int_is_a_float_but_a_bool_is_not_an_int(tmp_path: Path):
    path = tmp_path / "ints.toml"
    path.write_text("[optim]\nlr = 1\ngrad_clip = 0\n")
    config = TrainConfig.from_toml(path)
    assert (config.optim.lr, config.optim.grad_clip) == (1.0, 0.0)
    assert type(config.optim.lr) is float and type(config.optim.grad_clip) is float


def test_replace_finds_each_key_in_its_table():
    config = TrainConfig().replace(
        seed=3, backbone="bert4rec", skip_cl_weight=0.5, epochs=None
    )
    assert (config.optim.seed, config.model.backbone) == (3, "bert4rec")
    assert config.loss.skip_cl_weight == 0.5
    assert config.optim.epochs == TrainConfig().optim.epochs  # None = flag not given
    with pytest.raises(ConfigError, match=r"unknown config keys: \['epochz'\]"):
        TrainConfig().replace(epochz=3)
    with pytest.raises(ConfigError, match=r"\[loss\] target must be one of"):
        TrainConfig().replace(target="previous")
