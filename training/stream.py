"""Streamed sessions for logs larger than memory: many files, sharded, shuffled in a
bounded buffer, with the vocabulary counted in a first streaming pass.

    stream = SessionStream(paths, rank=rank, world_size=world, shuffle_buffer=10_000)
    loader = DataLoader(stream, batch_size=None, num_workers=4)
    vocab, counts = stream_vocabulary(paths, min_count=2)

The unit of reading is one file (``training.data.load_sessions``, any of its formats):
a log is written as many files (the event log export, or a Parquet/CSV dump cut by
size), so the memory held is one file's sessions plus the shuffle buffer, whatever
the log's length. Every (rank, data-loader worker) pair is one shard of
``world_size * num_workers``. With at least as many files as shards, each shard reads
whole files (file j goes to shard j mod shards); with fewer, every shard reads every
file and keeps the sessions whose index in it is its own modulo the shards. Either
way each session of the log is yielded by exactly one shard once per epoch. The file
order is drawn anew each epoch (:meth:`SessionStream.set_epoch`) from the seed, the
same on every shard, so the shards stay disjoint.

Shards holding whole files can hold unequal numbers of sessions: under DDP the ranks
must then agree on a number of steps (``torch.distributed.algorithms.Join``), which
the trainer does not do yet; see docs/TRAINING_SCALE.md.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from torch.utils.data import IterableDataset, get_worker_info

from skiprec.vocab import Vocabulary
from training.data import Session, load_sessions

T = TypeVar("T")


def shuffled(items: Iterable[T], buffer_size: int, rng: random.Random) -> Iterator[T]:
    """``items`` in a random order, holding at most ``buffer_size`` of them.

    Each new item takes the place of a random one of the buffer, which is yielded;
    the buffer is emptied in random order at the end. ``buffer_size`` 1 keeps the
    order. The larger the buffer, the closer to a uniform permutation.
    """
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


class SessionStream(IterableDataset[Session]):
    """The sessions of ``paths``, this rank's and this worker's share, shuffled."""

    def __init__(
        self,
        paths: Sequence[Path],
        format: str | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 10_000,
        seed: int = 0,
    ) -> None:
        if not paths:
            raise ValueError("no data files to stream")
        self.paths = tuple(Path(p) for p in paths)
        self.format = format
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the file order and the shuffle of ``epoch`` (call before iterating)."""
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        """(this reader's shard, number of shards) over ranks x loader workers."""
        worker = get_worker_info()
        workers, worker_id = (
            (1, 0) if worker is None else (worker.num_workers, worker.id)
        )
        return self.rank * workers + worker_id, self.world_size * workers

    def _sessions(self, shard: int, shards: int) -> Iterator[Session]:
        order = list(self.paths)
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)  # same on all
        if len(order) >= shards:
            for path in order[shard::shards]:
                yield from load_sessions(path, self.format)
            return
        for path in order:
            yield from load_sessions(path, self.format)[shard::shards]

    def __iter__(self) -> Iterator[Session]:
        shard, shards = self._shard()
        rng = random.Random(f"{self.seed}:{self.epoch}:{shard}")
        return shuffled(self._sessions(shard, shards), self.shuffle_buffer, rng)


def stream_vocabulary(
    paths: Sequence[Path], format: str | None = None, *, min_count: int = 1
) -> tuple[Vocabulary, Counter[str]]:
    """The vocabulary of the tracks seen at least ``min_count`` times, and every
    track's count, in one pass over ``paths`` (one file in memory at a time).

    The rarer tracks are out of the vocabulary: they read as the OOV bucket, whose
    embedding ``[loss] oov_share`` trains.
    """
    counts: Counter[str] = Counter()
    for path in paths:
        for session in load_sessions(path, format):
            counts.update(session.track_ids)
    kept = sorted(
        (track for track, count in counts.items() if count >= min_count),
        key=lambda track: (-counts[track], track),
    )
    return Vocabulary(tuple(kept)), counts
