"""The transition prior: the fitted table, the scores on a hand-computed toy, the
validation tuning, and runs with and without a prior."""

import json
import math

import numpy as np
import pytest
import torch

from skiprec.encoding import (
    FEEDBACK_MASK,
    FEEDBACK_PLAY,
    FEEDBACK_SKIP,
    encode_events,
    encode_sessions,
)
from skiprec.policy import SessionPolicy
from skiprec.vocab import MASK_ID, NUM_SPECIAL, OOV_ID, PAD_ID, Vocabulary
from training.checkpoint import Run, load_run, save_run
from training.cli.evaluate import main as evaluate_main
from training.cli.train import main as train_main
from training.config import (
    CONFIG_DIR,
    ConfigError,
    ModelSettings,
    OptimConfig,
    PriorConfig,
    TrainConfig,
)
from training.data import Session, write_event_log
from training.evaluation import evaluate
from training.model import ModelConfig, SessionEncoder
from training.prior import (
    ALPHAS,
    GAMMAS,
    PRIOR_FILE,
    TransitionPrior,
    fit_transitions,
    prior_scores,
    tune_prior,
)
from training.scoring import TorchScorer
from training.splits import build_vocab, session_disjoint_split
from training.synthetic import generate_sessions
from training.trainer import train

# The toy: tracks 3, 4, 5 (V = 6), N = 2 successors each.
#   3 -> 4 (w 2.0), 5 (w 1.0);  4 -> 5 (w 3.0);  5 -> 3 (w 1.0), 4 (w 0.5)
SUCCESSORS = torch.tensor([[0, 0], [0, 0], [0, 0], [4, 5], [5, 0], [3, 4]])
WEIGHTS = torch.tensor(
    [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 1.0], [3.0, 0.0], [1.0, 0.5]]
)
P, S, M = FEEDBACK_PLAY, FEEDBACK_SKIP, FEEDBACK_MASK


def _toy(item_ids, feedback, alpha=1.0, gamma=1.0):
    return prior_scores(
        torch.tensor(item_ids),
        torch.tensor(feedback),
        SUCCESSORS,
        WEIGHTS,
        alpha,
        gamma,
    )


def test_prior_scores_hand_computed_2x3():
    # Row 0 (SASRec window 3, 4, 5): last 5 -> {3: 1, 4: 0.5}; earlier mean of
    # 3 -> {4: 2, 5: 1} and 4 -> {5: 3} = {4: 1, 5: 2}; alpha 1, gamma 0.5:
    # 3: 1, 4: 0.5 + 0.5, 5: 1.
    # Row 1 (BERT4Rec window 3, 4, MASK): last real track 4 -> {5: 3}; earlier 3 ->
    # {4: 2, 5: 1}, times 0.5: 4: 1, 5: 3.5.
    scores = _toy([[3, 4, 5], [3, 4, MASK_ID]], [[P, S, P], [P, P, M]], 1.0, 0.5)
    expected = [[0, 0, 0, 1.0, 1.0, 1.0], [0, 0, 0, 0, 1.0, 3.5]]
    assert scores.dtype == torch.float32 and scores.shape == (2, 6)
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_prior_scores_ignore_pad_oov_and_mask_positions():
    # Row 0: PAD, 4, OOV: the last real track is 4, nothing earlier.
    # Row 1: all padding: no prior at all.
    scores = _toy([[PAD_ID, 4, OOV_ID], [PAD_ID, PAD_ID, PAD_ID]], [[0, P, P], [0] * 3])
    expected = [[0, 0, 0, 0, 0, 3.0], [0.0] * 6]
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_prior_scores_alpha_and_gamma_scale_their_terms():
    last = _toy([[3, 4, 5]], [[P, P, P]], 1.0, 0.0)
    earlier = _toy([[3, 4, 5]], [[P, P, P]], 0.0, 1.0)
    torch.testing.assert_close(last, torch.tensor([[0, 0, 0, 1.0, 0.5, 0]]))
    torch.testing.assert_close(earlier, torch.tensor([[0, 0, 0, 0, 1.0, 2.0]]))
    both = _toy([[3, 4, 5]], [[P, P, P]], 0.3, 0.7)
    torch.testing.assert_close(both, 0.3 * last + 0.7 * earlier)


def test_prior_scores_repeated_track_counts_each_occurrence():
    # Earlier 3, 3, 4: mean = (2 * {4: 2, 5: 1} + {5: 3}) / 3 = {4: 4/3, 5: 5/3}.
    scores = _toy([[3, 3, 4, 5]], [[P, P, P, P]], 0.0, 1.0)
    torch.testing.assert_close(scores, torch.tensor([[0, 0, 0, 0, 4 / 3, 5 / 3]]))


def _session(*track_ids):
    return Session(
        track_ids[0] + str(len(track_ids)), track_ids, (False,) * len(track_ids)
    )


def test_fit_transitions_counts_ranks_and_breaks_ties_by_index():
    sessions = [
        _session("a", "b", "c"),
        _session("a", "b"),
        _session("a", "c"),
        _session("b", "a"),
    ]
    vocab = Vocabulary(("a", "b", "c"))  # a = 3, b = 4, c = 5
    table = fit_transitions(sessions, vocab, num_successors=2)
    assert table.successors.dtype == np.int64 and table.weights.dtype == np.float32
    # a -> b twice, a -> c once; b -> a and b -> c once each (tie: lower index a).
    np.testing.assert_array_equal(
        table.successors, [[0, 0], [0, 0], [0, 0], [4, 5], [3, 5], [0, 0]]
    )
    log2, log3 = math.log1p(1), math.log1p(2)
    np.testing.assert_allclose(
        table.weights,
        [[0, 0], [0, 0], [0, 0], [log3, log2], [log2, log2], [0, 0]],
        rtol=1e-6,
    )
    top1 = fit_transitions(sessions, vocab, num_successors=1)
    np.testing.assert_array_equal(top1.successors[3:, 0], [4, 3, 0])
    assert (table.alpha, table.gamma) == (0.0, 0.0)


def test_fit_transitions_skips_oov_and_caps_the_width():
    vocab = Vocabulary(("a", "b"))
    table = fit_transitions([_session("a", "zz", "b", "a")], vocab, num_successors=64)
    assert table.num_successors == 2  # at most the number of tracks
    np.testing.assert_array_equal(table.successors[3:], [[0, 0], [3, 0]])  # b -> a


def test_transition_prior_save_load_round_trip(tmp_path):
    vocab = Vocabulary(("a", "b", "c"))
    prior = fit_transitions([_session("a", "b", "c")], vocab).with_weights(0.5, 0.25)
    prior.save(tmp_path / PRIOR_FILE)
    loaded = TransitionPrior.load(tmp_path / PRIOR_FILE)
    np.testing.assert_array_equal(loaded.successors, prior.successors)
    np.testing.assert_array_equal(loaded.weights, prior.weights)
    assert loaded.describe() == {"num_successors": 3, "alpha": 0.5, "gamma": 0.25}


@pytest.mark.parametrize(
    "successors, weights, message",
    [
        (np.zeros((4, 2), np.int32), np.zeros((4, 2), np.float32), "dtypes"),
        (np.zeros((4, 2), np.int64), np.zeros((4, 3), np.float32), "shapes"),
        (np.full((4, 2), 4, np.int64), np.ones((4, 2), np.float32), "outside 0..3"),
        (np.zeros((4, 2), np.int64), np.ones((4, 2), np.float32), "PAD successors"),
    ],
)
def test_transition_prior_refuses_invalid_tables(successors, weights, message):
    with pytest.raises(ValueError, match=message):
        TransitionPrior(successors, weights)


def test_prior_config_is_off_by_default_and_validated():
    assert TrainConfig().prior == PriorConfig(
        transition_prior=False, prior_successors=64
    )
    # A run trained before the table existed has no [prior]: off.
    old = TrainConfig.from_checkpoint({"seed": 0, "epochs": 3})
    assert not old.prior.transition_prior
    with pytest.raises(ConfigError, match=r"\[prior\] prior_successors must be >= 1"):
        TrainConfig.from_dict({"prior": {"prior_successors": 0}})
    with pytest.raises(ConfigError, match=r"\[prior\] transition_prior must be bool"):
        TrainConfig.from_dict({"prior": {"transition_prior": 1}})
    assert TrainConfig().replace(transition_prior=True).prior.transition_prior


@pytest.fixture(scope="module")
def split_and_vocab():
    sessions = generate_sessions(
        num_sessions=400, num_tracks=80, num_clusters=8, seed=0
    )
    split = session_disjoint_split(sessions, seed=0)
    return split, build_vocab(split.train)


def _random_model(num_items, backbone="sasrec"):
    torch.manual_seed(0)
    config = ModelConfig(
        num_items=num_items,
        backbone=backbone,
        max_seq_len=8,
        hidden_dim=8,
        num_layers=1,
        num_heads=2,
        feedback_input=True,
    )
    return SessionEncoder(config).eval()


def test_tune_prior_off_returns_nothing(split_and_vocab):
    split, vocab = split_and_vocab
    prior, summary = tune_prior(
        _random_model(vocab.size), split, vocab, PriorConfig(transition_prior=False)
    )
    assert prior is None and summary == {}


def test_tune_prior_chooses_the_best_grid_point_on_validation(split_and_vocab):
    split, vocab = split_and_vocab
    model = _random_model(vocab.size)
    config = PriorConfig(transition_prior=True, prior_successors=8)
    prior, summary = tune_prior(model, split, vocab, config)
    grid = summary["grid"]
    assert len(grid) == len(ALPHAS) * len(GAMMAS)
    best = max(point["validation_ndcg@10"] for point in grid)
    assert summary["validation_ndcg@10"] == best
    # A random model knows nothing; the counts do: the prior is kept and helps.
    assert prior is not None and summary["kept"]
    assert (prior.alpha, prior.gamma) == (summary["alpha"], summary["gamma"])
    assert prior.num_successors == summary["num_successors"] == 8
    assert best > summary["validation_ndcg@10_without"]
    # The grid's figure is the harness's figure for the chosen weights.
    chosen = evaluate(TorchScorer(model, prior=prior), split.validation, vocab)
    assert chosen["ndcg@10"] == pytest.approx(best, abs=1e-6)
    without = evaluate(TorchScorer(model), split.test, vocab)
    assert summary["test_without_prior"]["ndcg@10"] == without["ndcg@10"]


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec"])
def test_torch_scorer_adds_the_prior_to_the_logits(split_and_vocab, backbone):
    split, vocab = split_and_vocab
    model = _random_model(vocab.size, backbone)
    prior = fit_transitions(split.train, vocab, 8).with_weights(0.5, 0.25)
    histories = [encode_events(e.history, vocab) for e in split.test[:40]]
    plain = TorchScorer(model).score(histories)
    with_prior = TorchScorer(model, prior=prior).score(histories)
    scorer = TorchScorer(model)
    item_ids, feedback = map(torch.from_numpy, encode_sessions(histories, scorer.spec))
    expected = plain + prior.scores(item_ids, feedback).numpy()
    np.testing.assert_allclose(with_prior, expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(with_prior[:, NUM_SPECIAL:], plain[:, NUM_SPECIAL:])
    with pytest.raises(ValueError, match="rows, the model"):
        TorchScorer(_random_model(vocab.size + 1), prior=prior)


TINY_PRIOR = TrainConfig(
    model=ModelSettings(
        max_seq_len=8, hidden_dim=8, num_layers=1, num_heads=1, dropout=0.0
    ),
    optim=OptimConfig(epochs=2, batch_size=64, lr=0.01, num_threads=1),
    prior=PriorConfig(transition_prior=True, prior_successors=16),
)


def test_train_with_prior_saves_it_and_scores_with_it(split_and_vocab, tmp_path):
    split, vocab = split_and_vocab
    result = train(TINY_PRIOR, split, vocab, tmp_path, quiet=True)
    summary = result.metrics["prior"]
    assert summary["kept"] and (tmp_path / PRIOR_FILE).is_file()
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["prior"]["alpha"] == summary["alpha"]
    run = load_run(tmp_path)
    assert run.prior is not None
    assert (run.prior.alpha, run.prior.gamma) == (summary["alpha"], summary["gamma"])
    assert run.train_config["prior"]["transition_prior"] is True
    # The stored test figures are the loaded run's, prior included.
    policy = SessionPolicy(**result.metrics["policy"]["chosen"])
    again = evaluate(TorchScorer(run.model, prior=run.prior), split.test, vocab, policy)
    assert again["ndcg@10"] == pytest.approx(result.metrics["test"]["ndcg@10"])


def test_train_without_prior_writes_no_table(split_and_vocab, tmp_path):
    split, vocab = split_and_vocab
    (tmp_path / PRIOR_FILE).write_bytes(b"stale")  # a previous run in the same dir
    config = TrainConfig(
        model=TINY_PRIOR.model, optim=TINY_PRIOR.optim, prior=PriorConfig()
    )
    result = train(config, split, vocab, tmp_path, quiet=True)
    assert "prior" not in result.metrics
    assert not (tmp_path / PRIOR_FILE).exists()
    assert load_run(tmp_path).prior is None


def test_load_run_refuses_a_prior_of_another_vocabulary(split_and_vocab, tmp_path):
    split, vocab = split_and_vocab
    run = load_run(_saved_random_run(tmp_path, vocab))
    fit_transitions(split.train, Vocabulary(("x", "y"))).save(tmp_path / PRIOR_FILE)
    with pytest.raises(ValueError, match="rows, the model has"):
        load_run(tmp_path)
    assert run.prior is None


def _saved_random_run(run_dir, vocab):
    save_run(Run(model=_random_model(vocab.size), vocab=vocab, popularity={}), run_dir)
    return run_dir


def test_evaluate_cli_scores_a_run_with_its_prior(tmp_path, capsys):
    data = tmp_path / "events.csv"
    write_event_log(generate_sessions(num_sessions=300, num_tracks=60, seed=2), data)
    run_dir = tmp_path / "run"
    code = train_main(
        [
            "--data",
            str(data),
            "--out",
            str(run_dir),
            "--config",
            str(CONFIG_DIR / "tiny.toml"),
            "--transition-prior",
            "--epochs",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = tmp_path / "eval.json"
    assert (
        evaluate_main(["--run", str(run_dir), "--data", str(data), "--json", str(out)])
        == 0
    )
    results = json.loads(out.read_text())["results"]  # the default policy's
    (name,) = [name for name in results if name.endswith("+prior")]
    assert results[name]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"])
    capsys.readouterr()
