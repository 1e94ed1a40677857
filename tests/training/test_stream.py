"""The streamed loader: every session once per epoch across ranks and workers, a
bounded shuffle, and the streaming vocabulary pass."""

import random
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from skiprec.vocab import OOV_ID
from training.data import load_sessions, write_event_log
from training.splits import build_vocab
from training.stream import SessionStream, shuffled, stream_vocabulary
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


def test_stream_vocabulary_is_the_in_memory_one_and_drops_rare_tracks(log_files):
    sessions = [s for p in log_files for s in load_sessions(p)]
    vocab, counts = stream_vocabulary(log_files)
    assert vocab == build_vocab(sessions)
    assert sum(counts.values()) == sum(len(s) for s in sessions)
    min_count = sorted(counts.values())[len(counts) // 4] + 1
    common, _ = stream_vocabulary(log_files, min_count=min_count)
    rare = [t for t, c in counts.items() if c < min_count]
    assert rare and all(t not in common for t in rare)
    assert common.index(rare[0]) == OOV_ID  # read as the OOV bucket
    assert all(counts[t] >= min_count for t in common.track_ids)
