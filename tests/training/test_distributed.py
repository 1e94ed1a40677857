"""torchrun DDP: two gloo processes train what one process trains on the global batch,
and ``torchrun -m skiprec_cli train`` writes one run directory, from rank 0."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from training.batching import build_windows, epoch_batches
from training.config import (
    CONFIG_DIR,
    LossConfig,
    ModelSettings,
    OptimConfig,
    TrainConfig,
)
from training.data import Session, write_event_log
from training.distributed import (
    SINGLE,
    DistContext,
    broadcast_object,
    from_environment,
    shard_rows,
    shutdown,
    while_every_rank_has,
)
from training.splits import EvalExample, Split, build_vocab
from training.synthetic import generate_sessions
from training.trainer import train

# Eight windows = one global batch = one optimisation step.
NUM_SESSIONS = 8
# Every session has this skip pattern, so each rank's half of the batch holds as many
# targets, anchors and skip labels as the other: the mean of the two ranks' losses is
# then the global batch's loss, and their averaged gradients its gradient.
SKIPS = (False, True, False, False, True, False)

ONE_STEP = TrainConfig(
    model=ModelSettings(
        max_seq_len=8,
        hidden_dim=16,
        num_layers=1,
        num_heads=1,
        dropout=0.0,
        feedback_input=True,
        skip_head=True,
    ),
    optim=OptimConfig(epochs=1, batch_size=NUM_SESSIONS, lr=0.01, num_threads=1),
    loss=LossConfig(skip_cl_weight=0.5, skip_head_weight=0.25),
)


def _split() -> Split:
    sessions = [
        Session(
            f"s{i}", tuple(f"t{(3 * i + j) % 11}" for j in range(len(SKIPS))), SKIPS
        )
        for i in range(NUM_SESSIONS)
    ]
    validation = [EvalExample((("t1", False), ("t2", True)), "t3", False)]
    return Split(train=sessions, validation=validation, test=validation)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(rank: int, world_size: int, port: int, out: str) -> None:
    """One torchrun-like rank: the environment torchrun sets, then the trainer."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    context = from_environment("cpu")
    try:
        split = _split()
        vocab = build_vocab(split.train)
        windows = build_windows(split.train, vocab, ONE_STEP.model.max_seq_len)
        generator = torch.Generator().manual_seed(0)
        batches = list(epoch_batches(windows, ONE_STEP, generator, context))
        result = train(ONE_STEP, split, vocab, quiet=True, context=context)
        saved = {
            "parameters": dict(result.model.named_parameters()),
            "rows": [len(batch.tracks) for batch in batches],
            "world_size": result.metrics["world_size"],
        }
        torch.save(saved, Path(out) / f"{rank}.pt")
    finally:
        shutdown()


def test_two_gloo_ranks_step_like_one_process_on_the_global_batch(tmp_path):
    split = _split()
    single = train(ONE_STEP, split, build_vocab(split.train), quiet=True)
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    saved = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    # Each rank trained its half of the one global batch of eight windows.
    assert [s["rows"] for s in saved] == [[4], [4]]
    assert [s["world_size"] for s in saved] == [2, 2]
    ranks = [s["parameters"] for s in saved]
    expected = dict(single.model.named_parameters())
    initial = dict(type(single.model)(single.model.config).named_parameters())
    assert set(ranks[0]) == set(expected)
    for name, value in expected.items():
        # DDP keeps the replicas equal: both ranks hold the same parameters.
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-5)
    # The step moved the parameters (the comparison is not of two initialisations).
    assert any(not torch.equal(expected[n], initial[n]) for n in expected)


def _unequal_main(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
    )
    context = from_environment("cpu")
    try:
        # Shards of 5 and 3 items: both ranks take 3 steps, in every epoch.
        taken = [list(while_every_rank_has(iter(range(5 - 2 * rank)), context))]
        taken.append(list(while_every_rank_has(iter(range(3 + rank)), context)))
        shared = broadcast_object({"from": 0} if rank == 0 else None, context)
        torch.save({"taken": taken, "shared": shared}, Path(out) / f"{rank}.pt")
    finally:
        shutdown()


def test_ranks_with_unequal_shards_take_the_same_steps(tmp_path):
    mp.spawn(_unequal_main, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    saved = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    assert saved[0]["taken"] == [[0, 1, 2], [0, 1, 2]]
    assert saved[1]["taken"] == [[0, 1, 2], [0, 1, 2]]
    assert saved[0]["shared"] == saved[1]["shared"] == {"from": 0}
    assert list(while_every_rank_has(iter(range(4)), SINGLE)) == [0, 1, 2, 3]


def test_shard_rows_splits_a_global_batch_without_overlap():
    rows = torch.arange(7)
    shards = [shard_rows(rows, DistContext(rank=r, world_size=3)) for r in range(3)]
    assert torch.equal(torch.cat(shards), rows)
    assert [len(s) for s in shards] == [3, 2, 2]
    assert shard_rows(rows, SINGLE) is rows


@pytest.mark.skipif(sys.platform == "win32", reason="torchrun's agent needs POSIX")
@pytest.mark.parametrize("stream", [False, True])
def test_torchrun_trains_one_run_directory_from_rank_0(tmp_path, stream):
    sessions = generate_sessions(num_sessions=120, num_tracks=40, seed=1)
    if stream:  # three Parquet files, each listener in one
        data = [str(tmp_path / f"part-{n}.parquet") for n in range(3)]
        for n, path in enumerate(data):
            part = [s for i, s in enumerate(sessions) if i % 3 == n]
            write_event_log(part, Path(path), [f"u{i}-{n}" for i in range(len(part))])
    else:
        data = [str(tmp_path / "events.csv")]
        write_event_log(sessions, Path(data[0]))
    out = tmp_path / "run"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
        *("--nproc-per-node", "2", "-m", "skiprec_cli", "train"),
        *("--data", *data, "--out", str(out), "--quiet", "--epochs", "1"),
        *("--config", str(CONFIG_DIR / "tiny.toml")),
        *(("--stream", "--loader-workers", "1") if stream else ()),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert ("stream" in metrics) == stream
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 1
