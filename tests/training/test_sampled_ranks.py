"""The sampled validation ranks: exact when the sample is the whole catalogue, an
unbiased estimate of the tail's count otherwise, and the trainer's threshold."""

import json

import numpy as np
import pytest
import torch

from skiprec.policy import SessionPolicy
from skiprec.vocab import Vocabulary
from training.cli.sampled_error import main as sampled_error_main
from training.cli.train import main as train_main
from training.config import CONFIG_DIR, ModelSettings
from training.data import write_event_log
from training.evaluation import rank_examples
from training.model import ModelConfig, SessionEncoder
from training.sampled_ranks import (
    SAMPLED_MIN_TRACKS,
    SampledRanking,
    sampled_ranks,
    validation_ranking,
)
from training.scoring import TorchScorer
from training.splits import EvalExample
from training.synthetic import generate_sessions

POLICIES = [
    SessionPolicy(),
    SessionPolicy(skipped="exclude"),
    SessionPolicy(
        skipped="penalize", played="penalize", skipped_penalty=0.7, played_penalty=0.2
    ),
]


@pytest.fixture(scope="module")
def model(synthetic_vocab):
    torch.manual_seed(0)
    settings = ModelSettings(
        max_seq_len=8, hidden_dim=16, num_layers=1, num_heads=1, feedback_input=True
    )
    return SessionEncoder(ModelConfig.for_vocab(settings, synthetic_vocab.size)).eval()


@pytest.fixture(scope="module")
def examples(synthetic_split):
    unknown = EvalExample((("t1", False),), "never-seen", False)
    return [*synthetic_split.validation[:300], unknown]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    ("num_head", "num_tail"), [(10**6, 0), (0, 10**6), (40, 10**6)]
)
def test_a_sample_of_the_whole_catalogue_ranks_as_full_ranking(
    model, examples, synthetic_vocab, policy, num_head, num_tail
):
    exact = rank_examples(TorchScorer(model), examples, synthetic_vocab, (policy,))
    ranking = SampledRanking(num_head=num_head, num_tail=num_tail)
    sampled = sampled_ranks(model, examples, synthetic_vocab, ranking, policy, 64)
    np.testing.assert_array_equal(sampled.ranks, exact.ranks)
    np.testing.assert_array_equal(sampled.oov, exact.oov)
    np.testing.assert_array_equal(sampled.excluded, exact.excluded)
    if policy.skipped == "exclude":
        assert exact.excluded.any()  # the case is exercised
    assert exact.oov[-1]


def test_the_tail_sample_estimates_its_count_without_bias(
    model, examples, synthetic_vocab
):
    exact = rank_examples(TorchScorer(model), examples, synthetic_vocab).ranks[0]
    estimates = np.stack(
        [
            sampled_ranks(
                model,
                examples,
                synthetic_vocab,
                SampledRanking(num_head=20, num_tail=30, seed=seed),
            ).ranks[0]
            for seed in range(40)
        ]
    )
    known = np.isfinite(exact)
    # Each draw is off, their mean is not: the mean over 40 seeds of the estimated
    # rank is within a few standard errors of the exact rank on average.
    assert np.abs(estimates[0, known] - exact[known]).mean() > 1
    error = estimates[:, known].mean(axis=0) - exact[known]
    assert abs(error.mean()) < 3 * estimates[:, known].std(axis=0).mean() / 40**0.5


def test_validation_is_sampled_from_the_threshold_on():
    small = Vocabulary(tuple(f"t{i}" for i in range(SAMPLED_MIN_TRACKS - 1)))
    large = Vocabulary(tuple(f"t{i}" for i in range(SAMPLED_MIN_TRACKS)))
    assert validation_ranking(small) is None
    assert validation_ranking(large) == SampledRanking()


def test_sampled_error_command_reports_no_error_for_the_whole_catalogue(tmp_path):
    data = tmp_path / "events.csv"
    write_event_log(generate_sessions(num_sessions=150, num_tracks=60, seed=3), data)
    run = tmp_path / "run"
    config = str(CONFIG_DIR / "tiny.toml")
    args = ["--data", str(data), "--out", str(run), "--config", config, "--quiet"]
    assert train_main([*args, "--epochs", "1"]) == 0
    out = tmp_path / "error.json"
    whole = ["--head", "1000000", "--tail", "0", "--seeds", "1", "--json", str(out)]
    assert sampled_error_main(["--run", str(run), "--data", str(data), *whole]) == 0
    payload = json.loads(out.read_text())
    assert payload["max_abs_error_ndcg@10"] == 0.0
    assert payload["sampled"][0]["ndcg@10"] == payload["full"]["ndcg@10"] > 0
