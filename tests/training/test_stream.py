"""The streamed loader: every session once per epoch across ranks and workers (and
every training event once in the batches made of them), a bounded shuffle, and the
first pass (vocabulary, counts, held-out sessions)."""

import random
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from skiprec.vocab import OOV_ID, PAD_ID
from training.batching import build_windows, streamed_batches
from training.config import LossConfig, ModelSettings, TrainConfig
from training.data import load_sessions, write_event_log
from training.splits import build_vocab, held_out_part, popularity, session_examples
from training.stream import (
    SessionStream,
    StreamConfig,
    WindowStream,
    first_pass,
    shuffled,
)
from training.synthetic import generate_sessions


@pytest.fixture(scope="module")
def log_files(tmp_path_factory):
    """Five event-log files of 30 sessions each, each file its own listeners."""
    root = tmp_path_factory.mktemp("log")
    paths = []
    for number in range(5):
        sessions = generate_sessions(num_sessions=30, num_tracks=40, seed=number)
        path = root / f"part-{number}.csv"
        users = [f"f{number}-{s.session_id.split('#')[0]}" for s in sessions]
        write_event_log(sessions, path, users)
        paths.append(path)
    return paths


def _streamed_ids(paths, world_size, num_workers, epoch):
    seen = Counter()
    for rank in range(world_size):
        stream = SessionStream(
            paths, rank=rank, world_size=world_size, shuffle_buffer=7, seed=3
        )
        stream.set_epoch(epoch)
        # The loader copies the stream into each worker process (fork or spawn).
        loader = DataLoader(stream, batch_size=None, num_workers=num_workers)
        seen.update(s.session_id for s in loader)
    return seen


@pytest.mark.parametrize(
    ("num_files", "world_size", "num_workers"),
    [(5, 2, 2), (1, 2, 2), (3, 2, 0), (5, 1, 0)],  # whole files / within files
)
def test_every_session_is_streamed_exactly_once_per_epoch(
    log_files, num_files, world_size, num_workers
):
    paths = log_files[:num_files]
    expected = Counter(s.session_id for p in paths for s in load_sessions(p))
    assert len(expected) == sum(len(load_sessions(p)) for p in paths)  # ids unique
    for epoch in (0, 1):
        assert _streamed_ids(paths, world_size, num_workers, epoch) == expected


def test_each_epoch_streams_another_order(log_files):
    stream = SessionStream(log_files, shuffle_buffer=50, seed=0)
    orders = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        orders.append([s.session_id for s in stream])
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]


def test_shuffled_is_a_permutation_that_holds_at_most_its_buffer():
    held = []

    def items():
        for i in range(100):
            held.append(i)
            yield i

    out = []
    for item in shuffled(items(), 10, random.Random(0)):
        out.append(item)
        # Read but not yet yielded: never more than the buffer.
        assert len(held) - len(out) <= 10
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert list(shuffled(range(5), 1, random.Random(0))) == list(range(5))


def test_first_pass_counts_the_training_part_and_drops_rare_tracks(log_files):
    sessions = [s for p in log_files for s in load_sessions(p)]
    train = [s for s in sessions if held_out_part(s.session_id) == "train"]
    held = [s for s in sessions if held_out_part(s.session_id) == "validation"]
    summary = first_pass(log_files, StreamConfig(), max_seq_len=8)
    assert summary.vocab == build_vocab(train)
    assert summary.num_events == sum(len(s) for s in train)
    assert summary.num_windows == sum(-(-len(s) // 8) for s in train if len(s) > 1)
    assert summary.popularity() == popularity(train)
    assert summary.validation == [e for s in held for e in session_examples(s)]
    assert summary.held_out_sessions["validation"] == len(held) > 0
    counts = summary.counts
    min_count = sorted(counts.values())[len(counts) // 4] + 1
    common = first_pass(log_files, StreamConfig(min_count=min_count), 8).vocab
    rare = [t for t, c in counts.items() if c < min_count]
    assert rare and all(t not in common for t in rare)
    assert common.index(rare[0]) == OOV_ID  # read as the OOV bucket
    assert all(counts[t] >= min_count for t in common.track_ids)
    capped = first_pass(log_files, StreamConfig(max_eval_sessions=2), 8)
    assert capped.validation == [e for s in held[:2] for e in session_examples(s)]


def _rank_events(log_files, world_size, workers, epoch, batch_rows):
    """Every rank's streamed batches of one epoch, as the trainer gets them (without
    the agreement on a step count, which needs a process group)."""
    summary = first_pass(log_files, StreamConfig(), max_seq_len=8)
    config = TrainConfig(
        model=ModelSettings(max_seq_len=8, hidden_dim=8, num_heads=1),
        loss=LossConfig(oov_share=0.5),
    )
    events, sizes = Counter(), []
    for rank in range(world_size):
        stream = SessionStream(
            log_files, rank=rank, world_size=world_size, shuffle_buffer=5, part="train"
        )
        windows = WindowStream(stream, summary.vocab, 8, chunk_sessions=7)
        windows.set_epoch(epoch)
        chunks = DataLoader(windows, batch_size=None, num_workers=workers)
        rare = torch.zeros(summary.vocab.size, dtype=torch.bool)
        for batch in streamed_batches(chunks, config, batch_rows, f"{rank}", rare):
            sizes.append(len(batch.tracks))
            real = batch.tracks != PAD_ID
            events.update(batch.tracks[real].tolist())
    return events, sizes, summary


@pytest.mark.parametrize(("world_size", "workers"), [(1, 0), (2, 2)])
def test_streamed_batches_hold_every_training_event_once_per_epoch(
    log_files, world_size, workers
):
    expected = Counter()
    vocab = None
    for epoch in (0, 1):
        events, sizes, summary = _rank_events(log_files, world_size, workers, epoch, 6)
        vocab = summary.vocab
        if not expected:
            for path in log_files:
                for s in load_sessions(path):
                    if held_out_part(s.session_id) == "train" and len(s) > 1:
                        expected.update(vocab.indices(s.track_ids))
        assert events == expected
        # Full batches but for one smaller last batch per reader.
        assert sum(size != 6 for size in sizes) <= world_size * max(workers, 1)


def test_streamed_batches_are_the_same_when_drawn_again(log_files):
    first = _rank_events(log_files, 2, 0, epoch=3, batch_rows=6)[:2]
    again = _rank_events(log_files, 2, 0, epoch=3, batch_rows=6)[:2]
    other = _rank_events(log_files, 2, 0, epoch=4, batch_rows=6)[:2]
    assert first == again and first[0] == other[0]


def test_streamed_rare_tracks_are_oov_inputs_never_targets(log_files):
    counts = first_pass(log_files, StreamConfig(), max_seq_len=8).counts
    min_count = sorted(counts.values())[len(counts) // 4] + 1
    summary = first_pass(log_files, StreamConfig(min_count=min_count), max_seq_len=8)
    sessions = [s for p in log_files for s in load_sessions(p)]
    windows = build_windows(sessions, summary.vocab, 8)
    assert (windows.tracks == OOV_ID).any()
    assert not (windows.next_targets == OOV_ID).any()
    assert not (windows.next_played_targets == OOV_ID).any()
