"""``skiprec evaluate``'s protocol: the run's split, the reference row, policies chosen
on validation, intervals, the skip block and the JSON record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.baselines import BASELINES
from training.checkpoint import Run, load_run, save_run
from training.cli.evaluate import _finite, main
from training.config import ModelSettings, TrainConfig
from training.data import data_fingerprint, load_sessions, write_event_log
from training.model import ModelConfig, SessionEncoder
from training.protocol import FIXED_POLICIES, PENALTY_GRID, SplitChoice, choose_split
from training.report import describe
from training.splits import build_vocab, popularity, session_disjoint_split
from training.synthetic import generate_sessions


def test_choose_split_reads_the_run_then_the_flag() -> None:
    recorded = {"protocol": "session", "seed": 4}
    assert choose_split(recorded, None) == (SplitChoice("session", 4, "run"), [])
    assert choose_split(recorded, "session") == (SplitChoice("session", 4, "run"), [])
    choice, warnings = choose_split(recorded, "loo")
    assert choice == SplitChoice("loo", None, "flag")
    assert "overrides the run's recorded split" in warnings[0]
    choice, warnings = choose_split(None, None)
    assert choice == SplitChoice("session", 0, "default")
    assert "records no split protocol" in warnings[0]
    assert choose_split({}, "all") == (SplitChoice("all", None, "flag"), [])
    choice, warnings = choose_split({"protocol": "weird"}, None)
    assert choice.source == "default" and "unknown split" in warnings[0]


def test_finite_makes_strict_json() -> None:
    assert _finite({"a": [float("nan"), 1.0], "b": (float("inf"),)}) == {
        "a": [None, 1.0],
        "b": [None],
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained tiny model saved as a run, with the split it records."""
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "events.csv"
    sessions = generate_sessions(num_sessions=150, num_tracks=50, seed=2)
    write_event_log(sessions, data)
    loaded = load_sessions(data)
    split = session_disjoint_split(loaded, seed=1)
    vocab = build_vocab(split.train)
    torch.manual_seed(0)
    settings = ModelSettings(
        max_seq_len=8, hidden_dim=16, num_layers=1, num_heads=1, dropout=0.0
    )
    model = SessionEncoder(ModelConfig.for_vocab(settings, vocab.size))
    run_dir = root / "run"
    save_run(
        Run(
            model=model,
            vocab=vocab,
            popularity=popularity(split.train),
            metrics={"split": {"protocol": "session", "seed": 1}},
            data_fingerprint=data_fingerprint(data),
        ),
        run_dir,
    )
    return run_dir, data


def test_evaluate_protocol_end_to_end(tiny_run, tmp_path, capsys) -> None:
    run_dir, data = tiny_run
    out_json, out_md = tmp_path / "eval.json", tmp_path / "eval.md"
    argv = ["--run", str(run_dir), "--data", str(data), "--baselines"]
    argv += ["--bootstrap", "50", "--json", str(out_json), "--markdown", str(out_md)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # the split came from the run: nothing to warn about
    assert out_md.read_text().strip() == captured.out.strip()
    assert "| markov | none (reference) |" in captured.out
    assert "chosen on the validation split" in captured.out
    assert "| momentum_logistic |" in captured.out

    payload = json.loads(out_json.read_text())
    assert (payload["split"], payload["split_seed"]) == ("session", 1)
    assert payload["split_source"] == "run"
    assert payload["protocol"]["chosen_on"] == "validation"
    assert payload["protocol"]["reported_on"] == "test"
    assert payload["protocol"]["penalty_grid"] == list(PENALTY_GRID)
    models = {row["model"] for row in payload["rows"]}
    assert models - set(BASELINES) == {describe(TrainConfig())}  # the run's model
    assert set(BASELINES) <= models
    for model in models:
        policies = [r["policy"] for r in payload["rows"] if r["model"] == model]
        assert policies == [*FIXED_POLICIES, "penalize"]
        chosen = payload["chosen_penalties"][model]
        assert chosen["skipped_penalty"] in PENALTY_GRID
        grid = payload["validation"][model]["penalty_grid"]
        assert len(grid) == len(PENALTY_GRID) ** 2
        assert chosen["validation ndcg@10"] == max(g["ndcg@10"] for g in grid)
    assert payload["rows"][0]["reference"]  # the reference row comes first
    reference = [r for r in payload["rows"] if r["reference"]]
    assert [(r["model"], r["policy"]) for r in reference] == [("markov", "none")]
    assert reference[0]["vs_reference"] == {}
    row = next(r for r in payload["rows"] if r["policy"] == "exclude_skipped")
    interval = row["vs_reference"]["ndcg@10"]
    assert interval["low"] <= interval["difference"] <= interval["high"]
    assert interval["num_resamples"] == 50
    assert "after_skip/played/ndcg@10" in row["metrics"]
    # `results`: each scorer under the policy the run's bundle serves by default
    # (a run that recorded none: skiprec.policy.SessionPolicy(), no rule).
    assert payload["results_policy"]["skipped"] == "none"
    assert payload["results"]["markov"] == next(
        r["metrics"]
        for r in payload["rows"]
        if (r["model"], r["policy"]) == ("markov", "none")
    )
    skip = payload["skip"]
    assert skip["reference"] == "momentum_logistic"
    assert set(skip["predictors"]) == {
        "previous_skipped",
        "track_skip_rate",
        "momentum_logistic",
    }
    assert "auc_vs_momentum_logistic" in skip["predictors"]["previous_skipped"]
    assert any("p_skip" in note for note in skip["notes"])


def test_evaluate_all_sessions_and_sampled(tiny_run, tmp_path, capsys) -> None:
    run_dir, data = tiny_run
    out_json = tmp_path / "all.json"
    argv = ["--run", str(run_dir), "--data", str(data), "--split", "all"]
    argv += ["--sampled", "--bootstrap", "20", "--json", str(out_json)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "overrides the run's recorded split" in captured.err
    payload = json.loads(out_json.read_text())
    assert payload["ranking"] == "sampled"
    assert payload["protocol"]["chosen_on"] is None  # no validation: no penalize row
    reference = {"model": describe(TrainConfig()), "policy": "none"}
    assert payload["protocol"]["reference"] == reference
    assert [r["policy"] for r in payload["rows"]] == list(FIXED_POLICIES)
    assert payload["skip"]["predictors"] == {}


def test_evaluate_refuses_bad_arguments(tiny_run, capsys) -> None:
    run_dir, data = tiny_run
    base = ["--run", str(run_dir), "--data", str(data)]
    assert main([*base, "--bootstrap", "0"]) == 2
    assert main([*base, "--split", "all", "--baselines"]) == 2
    assert "needs a training split" in capsys.readouterr().err


def test_evaluate_reports_a_skip_head_against_the_momentum_baseline(
    tiny_run, tmp_path, capsys
) -> None:
    run_dir, data = tiny_run
    run = load_run(run_dir)
    torch.manual_seed(0)
    settings = ModelSettings(
        max_seq_len=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=1,
        dropout=0.0,
        skip_head=True,
    )
    run.model = SessionEncoder(ModelConfig.for_vocab(settings, run.vocab.size))
    head_dir = tmp_path / "head"
    save_run(run, head_dir)
    out_json = tmp_path / "head.json"
    argv = ["--run", str(head_dir), "--data", str(data), "--bootstrap", "20"]
    assert main([*argv, "--json", str(out_json)]) == 0
    skip = json.loads(out_json.read_text())["skip"]
    name = describe(TrainConfig())
    assert set(skip["predictors"]) == {
        "previous_skipped",
        "track_skip_rate",
        "momentum_logistic",
        name,
    }
    model = skip["predictors"][name]
    assert 0.0 <= model["auc"] <= 1.0 and model["log_loss"] > 0
    assert "auc_vs_momentum_logistic" in model and skip["notes"] == []
