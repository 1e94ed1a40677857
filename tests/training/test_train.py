"""Training end to end: the learning test, every loss variant, and the train and
evaluate CLIs."""

import json

import numpy as np
import pytest

from skiprec.encoding import encode_graded_events
from skiprec.policy import SessionPolicy
from training.baselines import BASELINES, PopularityScorer
from training.checkpoint import load_run
from training.cli.evaluate import main as evaluate_main
from training.cli.train import main
from training.config import CONFIG_DIR, ModelSettings, OptimConfig, TrainConfig
from training.data import Session, write_event_log
from training.evaluation import evaluate
from training.scoring import TorchScorer
from training.splits import build_vocab, session_disjoint_split
from training.synthetic import generate_sessions
from training.trainer import SKIP_WEIGHT_GRID, train


@pytest.fixture(scope="module")
def synthetic_split():
    sessions = generate_sessions(
        num_sessions=600, num_tracks=150, num_clusters=10, seed=0
    )
    split = session_disjoint_split(sessions, seed=0)
    return split, build_vocab(split.train)


@pytest.fixture(scope="module")
def event_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "events.csv"
    write_event_log(generate_sessions(num_sessions=200, num_tracks=60, seed=1), path)
    return path


TINY = TrainConfig(
    model=ModelSettings(
        max_seq_len=16,
        hidden_dim=16,
        num_layers=1,
        num_heads=1,
        dropout=0.0,
        feedback_input=True,
    ),
    optim=OptimConfig(epochs=6, batch_size=32, lr=0.01, patience=3, num_threads=1),
)


def test_tiny_model_learns_synthetic_sessions(synthetic_split):
    split, vocab = synthetic_split
    popularity = evaluate(PopularityScorer.fit(split.train, vocab), split.test, vocab)
    result = train(TINY, split, vocab, quiet=True)
    assert result.metrics["test"]["ndcg@10"] >= 2 * popularity["ndcg@10"]
    assert result.metrics["best_epoch"] >= 1
    # The serving policy is chosen on validation, and the test figures are its own.
    recorded = result.metrics["policy"]
    policy = SessionPolicy(**recorded["chosen"])
    assert recorded["validation"][recorded["name"]] == max(
        recorded["validation"].values()
    )
    again = evaluate(TorchScorer(result.model), split.test, vocab, policy)
    assert again["ndcg@10"] == pytest.approx(result.metrics["test"]["ndcg@10"])


@pytest.mark.parametrize(
    "changes",
    [
        {
            "backbone": "bert4rec",
            "skip_cl_weight": 0.5,
            "skip_cl_anchor": "item_embedding",
        },
        {
            "target": "next_played",
            "unlikelihood_weight": 0.5,
            "skip_cl_compat": True,
            "skip_cl_weight": 0.1,
        },
        {
            "loss": "sampled_softmax",
            "num_negatives": 20,
            "skip_hard_negatives": True,
            "unlikelihood_weight": 0.2,
            "schedule": "cosine",
            "warmup_steps": 5,
        },
        {"skip_head": True, "skip_head_weight": 1.0, "graded_feedback": True},
        {"backbone": "bert4rec", "skip_head": True, "skip_head_weight": 0.5},
        # Log-Q corrected popularity negatives (in-batch ones too), every skip term on
        {
            "loss": "sampled_softmax",
            "num_negatives": 20,
            "negative_sampler": "popularity",
            "logq_correction": True,
            "skip_hard_negatives": True,
            "unlikelihood_weight": 0.2,
            "skip_cl_weight": 0.2,
            "skip_head": True,
            "skip_head_weight": 0.5,
        },
        # In-batch negatives only (as in Yi et al. 2019), log-Q corrected; BERT4Rec
        {
            "backbone": "bert4rec",
            "loss": "sampled_softmax",
            "num_negatives": 1,
            "logq_correction": True,
            "skip_hard_negatives": True,
            "skip_cl_weight": 0.2,
        },
        # Uniform negatives alone, no in-batch ones
        {
            "loss": "sampled_softmax",
            "num_negatives": 30,
            "in_batch_negatives": False,
            "skip_hard_negatives": True,
            "skip_cl_weight": 0.2,
        },
    ],
)
def test_every_loss_variant_trains(synthetic_split, changes):
    split, vocab = synthetic_split
    config = TINY.replace(epochs=1, **changes)
    result = train(config, split, vocab, quiet=True)
    row = result.history[0]
    assert row["train_loss"] > 0 and result.metrics["validation"]["ndcg@10"] > 0
    for part in ("skip_cl", "unlikelihood", "skip_head"):
        weight = getattr(config.loss, f"{part}_weight")
        assert (f"train_{part}" in row) == (weight > 0)
    assert ("skip_weight" in result.metrics) == config.model.skip_head


def _graded(sessions):
    """The synthetic sessions with a skip level per event (skips 0/1, plays 2/3)."""
    return [
        Session(
            s.session_id,
            s.track_ids,
            s.skipped,
            s.timestamps,
            tuple(
                (0 if skipped else 2) + (i % 2) for i, skipped in enumerate(s.skipped)
            ),
        )
        for s in sessions
    ]


def test_skip_head_learns_and_its_weight_is_chosen_on_validation(tmp_path):
    sessions = _graded(
        generate_sessions(num_sessions=600, num_tracks=150, num_clusters=10, seed=0)
    )
    split = session_disjoint_split(sessions, seed=0)
    vocab = build_vocab(split.train)
    config = TINY.replace(
        epochs=3, graded_feedback=True, skip_head=True, skip_head_weight=1.0
    )
    result = train(config, split, vocab, tmp_path / "run", quiet=True)
    chosen = result.metrics["skip_weight"]
    assert chosen["grid"] == sorted(SKIP_WEIGHT_GRID) and 0.0 in chosen["grid"]
    best = chosen["grid"][int(np.argmax(chosen["validation_ndcg@10"]))]
    assert chosen["chosen"] == best == result.model.skip_weight
    assert load_run(tmp_path / "run").model.skip_weight == best  # saved with the run
    # The head predicts the synthetic skips (their probability rises with the
    # taste distance) far better than chance on the test examples.
    scorer = TorchScorer(result.model)
    examples = split.test
    histories = [
        encode_graded_events(e.history, e.history_levels, vocab) for e in examples
    ]
    targets = np.array([vocab.index(e.target) for e in examples])
    labels = np.array([e.target_skipped for e in examples])
    p_skip = scorer.p_skip(histories, targets)
    assert _auc(p_skip, labels) > 0.7


def _auc(scores, labels):
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    negatives = len(labels) - positives
    return (ranks[labels].sum() - positives * (positives + 1) / 2) / (
        positives * negatives
    )


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, event_log):
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = ["--data", str(event_log), "--out", str(out), "--quiet", "--seed", "3"]
    argv += ["--config", str(CONFIG_DIR / "tiny.toml"), "--epochs", "2"]
    assert main(argv) == 0
    return out


def test_cli_trains_a_run_directory(cli_run):
    files = ("checkpoint.pt", "vocab.json", "popularity.json", "metrics.json")
    for name in (*files, "curves.png", "train_log.jsonl"):
        assert (cli_run / name).is_file(), name
    metrics = json.loads((cli_run / "metrics.json").read_text())
    assert 0 < metrics["test"]["ndcg@10"] <= 1
    log = (cli_run / "train_log.jsonl").read_text().splitlines()
    assert len(log) == metrics["epochs_run"]
    run = load_run(cli_run)
    config = TrainConfig.from_checkpoint(run.train_config)
    assert config == TrainConfig.from_toml(CONFIG_DIR / "tiny.toml").replace(
        seed=3, epochs=2
    )
    assert len(run.data_fingerprint) == 64
    assert set(run.popularity) == set(run.vocab.track_ids)


def test_evaluate_cli_writes_table_and_json(cli_run, event_log, tmp_path, capsys):
    out_json, out_md = tmp_path / "eval.json", tmp_path / "eval.md"
    argv = ["--run", str(cli_run), "--data", str(event_log), "--baselines"]
    argv += ["--json", str(out_json), "--markdown", str(out_md)]
    assert evaluate_main(argv) == 0
    table = capsys.readouterr().out
    assert "| sasrec+fb |" in table and "| markov |" in table
    assert out_md.read_text().strip() == table.strip()
    payload = json.loads(out_json.read_text())
    saved = json.loads((cli_run / "metrics.json").read_text())["test"]
    # Same split, same model, same harness: the numbers the run saved.
    assert payload["results"]["sasrec+fb"]["ndcg@10"] == saved["ndcg@10"]
    assert set(payload["results"]) == {"sasrec+fb", *BASELINES}
    sampled = ["--run", str(cli_run), "--data", str(event_log), "--sampled"]
    assert evaluate_main([*sampled, "--split", "all", "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["ranking"] == "sampled"


def test_evaluate_cli_refuses_a_missing_run(tmp_path, event_log, capsys):
    argv = ["--run", str(tmp_path / "nothing"), "--data", str(event_log)]
    assert evaluate_main(argv) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.csv"], "no such data file"),
        (["--config", "missing.toml"], "config file not found"),
    ],
)
def test_cli_errors_exit_2_with_a_message(tmp_path, event_log, capsys, args, message):
    base = {
        "--data": str(event_log),
        "--out": str(tmp_path / "run"),
        "--config": str(CONFIG_DIR / "tiny.toml"),
    }
    base.update(
        dict(zip(args[::2], [str(tmp_path / a) for a in args[1::2]], strict=True))
    )
    argv = [part for pair in base.items() for part in pair] + ["--quiet"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_reports_bad_data_file(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,track_id,event,timestamp\nu1,t1,maybe,1\n")
    argv = ["--data", str(bad), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 2
    assert str(bad) in capsys.readouterr().err
