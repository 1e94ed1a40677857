"""A run killed mid-epoch and resumed from its resume.pt ends as the uninterrupted
run does: same parameters, same per-epoch log; in memory and streamed."""

import json

import pytest
import torch

import training.trainer as trainer
from training.checkpoint import RESUME_FILE
from training.config import LossConfig, ModelSettings, OptimConfig, TrainConfig
from training.data import write_event_log
from training.distributed import SINGLE
from training.sources import StreamSource
from training.splits import Split, build_vocab, session_disjoint_split
from training.stream import StreamConfig, first_pass
from training.synthetic import generate_sessions

# Every kind of randomness the loop draws: dropout (torch's global generator),
# per-epoch OOV inputs and permutation, and per-step negatives (the batching one).
CONFIG = TrainConfig(
    model=ModelSettings(
        max_seq_len=12, hidden_dim=16, num_layers=1, num_heads=1, dropout=0.2
    ),
    optim=OptimConfig(
        epochs=3, batch_size=32, lr=0.01, num_threads=1, checkpoint_every=3
    ),
    loss=LossConfig(
        loss="sampled_softmax",
        num_negatives=16,
        negative_sampler="popularity",
        logq_correction=True,
        oov_share=0.5,
        skip_cl_weight=0.2,
    ),
)


class Killed(Exception):
    """Stands for the process being killed."""


@pytest.fixture(scope="module")
def data():
    sessions = generate_sessions(num_sessions=160, num_tracks=60, seed=2)
    split = session_disjoint_split(sessions, seed=0)
    return split, build_vocab(split.train)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    split, vocab = data
    out = tmp_path_factory.mktemp("whole") / "run"
    result = trainer.train(CONFIG, split, vocab, out, quiet=True)
    return result, out


def _killed_at(monkeypatch, call):
    """Make the ``call``-th batch loss of the next run raise Killed."""
    real, calls = trainer.batch_loss, []

    def batch_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "batch_loss", batch_loss)


# 9 steps an epoch and a resume file every 3 steps and at each epoch's end: killed in
# steps 5 and 9 it resumes from mid-epoch (after steps 3 and 6), in step 11 from the
# end of epoch 1.
@pytest.mark.parametrize("killed_at", [5, 9, 11])
def test_a_killed_run_resumes_to_the_uninterrupted_result(
    data, uninterrupted, tmp_path, monkeypatch, killed_at
):
    split, vocab = data
    whole, whole_dir = uninterrupted
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _killed_at(patch, killed_at)
        with pytest.raises(Killed):
            trainer.train(CONFIG, split, vocab, out, quiet=True)
    assert (out / RESUME_FILE).is_file()
    resumed = trainer.train(CONFIG, split, vocab, out, quiet=True, resume=True)
    for (name, value), (_, expected) in zip(
        resumed.model.state_dict().items(),
        whole.model.state_dict().items(),
        strict=True,
    ):
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7, msg=name)

    def log(run_dir):
        lines = (run_dir / "train_log.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in rows]

    rows, expected_rows = log(out), log(whole_dir)
    assert len(rows) == len(expected_rows) == CONFIG.optim.epochs
    for row, expected_row in zip(rows, expected_rows, strict=True):
        assert row == pytest.approx(expected_row, rel=1e-6)
    assert resumed.metrics["validation"] == whole.metrics["validation"]
    assert not (out / RESUME_FILE).exists()  # the run is complete


def test_resume_refuses_another_configuration(data, tmp_path, monkeypatch):
    split, vocab = data
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _killed_at(patch, 4)
        with pytest.raises(Killed):
            trainer.train(CONFIG, split, vocab, out, quiet=True)
    other = CONFIG.replace(lr=0.02)
    with pytest.raises(ValueError, match="another configuration"):
        trainer.train(other, split, vocab, out, quiet=True, resume=True)


def test_without_checkpoint_every_no_resume_file_is_written(data, tmp_path):
    split, vocab = data
    config = CONFIG.replace(checkpoint_every=0, epochs=1)
    trainer.train(config, split, vocab, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / RESUME_FILE).exists()


def test_a_killed_streamed_run_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch
):
    paths = []
    for number in range(2):
        sessions = generate_sessions(num_sessions=120, num_tracks=60, seed=number)
        paths.append(tmp_path / f"part-{number}.parquet")
        users = [f"f{number}-{s.session_id.split('#')[0]}" for s in sessions]
        write_event_log(sessions, paths[-1], users)
    summary = first_pass(paths, StreamConfig(), CONFIG.model.max_seq_len)
    split = Split(train=[], validation=summary.validation, test=summary.test)

    def run(out, resume=False):
        source = StreamSource(paths, summary, CONFIG, StreamConfig(), SINGLE)
        return trainer.train(
            CONFIG, split, summary.vocab, out, quiet=True, source=source, resume=resume
        )

    whole = run(tmp_path / "whole")
    with monkeypatch.context() as patch:
        _killed_at(patch, 5)
        with pytest.raises(Killed):
            run(tmp_path / "run")
    resumed = run(tmp_path / "run", resume=True)
    for name, value in resumed.model.state_dict().items():
        expected = whole.model.state_dict()[name]
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7, msg=name)
    assert resumed.metrics["validation"] == whole.metrics["validation"]
