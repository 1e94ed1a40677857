"""Streamed sessions for logs larger than memory: many files, sharded, shuffled in a
bounded buffer, with the vocabulary counted in a first streaming pass.

    summary = first_pass(paths, StreamConfig(min_count=2), max_seq_len=50)
    stream = SessionStream(paths, rank=rank, world_size=world, part="train")
    chunks = DataLoader(WindowStream(stream, summary.vocab, 50), batch_size=None,
                        num_workers=2)

The unit of reading is one file (``training.data.load_sessions``, any of its formats,
Parquet included): a log is written as many files (the event log export, or a
Parquet/CSV dump cut by size), so the memory held is one file's sessions plus the
shuffle buffer, whatever the log's length. Every (rank, data-loader worker) pair is
one shard of ``world_size * num_workers``. With at least ``WHOLE_FILES_PER_SHARD``
files per shard, each shard reads whole files (file j goes to shard j mod shards);
with fewer, every shard reads every file and keeps the sessions whose index in it is
its own modulo the shards. Either way each session of the log is yielded by exactly
one shard once per epoch. The file order is drawn anew each epoch
(:meth:`SessionStream.set_epoch`) from the seed, the same on every shard, so the
shards stay disjoint.

Held-out sessions are chosen by a hash of their id (``training.splits.held_out_part``),
so the training stream skips them on every shard without a list of them; the first
pass keeps at most ``max_eval_sessions`` of each held-out part in memory for
validation and test. Shards can hold unequal numbers of sessions: the trainer stops
an epoch at the first step some rank has no batch for
(``training.distributed.while_every_rank_has``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from torch.utils.data import IterableDataset, get_worker_info

from skiprec.vocab import Vocabulary
from training.batching import TrainWindows, build_windows
from training.data import Session, load_sessions
from training.splits import EvalExample, Part, held_out_part, session_examples

T = TypeVar("T")

# Files per shard from which each shard reads whole files. Under torchrun the ranks
# stop an epoch together at the shortest shard; with whole files that shard can be
# a file short of the others, so below this many files per shard (a shard then
# loses at most a quarter of its share) every shard reads every file and keeps
# every shards-th session instead, which costs a parse of the whole log per shard.
WHOLE_FILES_PER_SHARD = 4
# Sessions a loader worker encodes into one chunk of windows: large enough that
# the per-chunk work (window building, the epoch's draws) is vectorised, small
# enough that a chunk is a few MB.
CHUNK_SESSIONS = 2_048


@dataclass(frozen=True)
class StreamConfig:
    """How ``skiprec train --stream`` reads its data (``training/cli/train.py``)."""

    shuffle_buffer: int = 10_000  # sessions held by each shard's shuffle
    loader_workers: int = 0  # DataLoader worker processes per rank; 0 = in-process
    min_count: int = 1  # tracks seen fewer times in training read as OOV
    max_eval_sessions: int = 2_000  # held-out sessions kept per part (val, test)
    vocab: Path | None = None  # a fixed vocabulary instead of the counted one

    def __post_init__(self) -> None:
        for name in ("shuffle_buffer", "min_count", "max_eval_sessions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.loader_workers < 0:
            raise ValueError("loader_workers must be >= 0")


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
    """The sessions of ``paths`` (of one held-out ``part``, or all), this rank's and
    this worker's share, shuffled."""

    def __init__(
        self,
        paths: Sequence[Path],
        format: str | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 10_000,
        seed: int = 0,
        part: Part | None = None,
    ) -> None:
        if not paths:
            raise ValueError("no data files to stream")
        self.paths = tuple(Path(p) for p in paths)
        self.format = format
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.part = part
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

    def _file(self, path: Path) -> list[Session]:
        sessions = load_sessions(path, self.format)
        if self.part is None:
            return sessions
        return [s for s in sessions if held_out_part(s.session_id) == self.part]

    def _sessions(self, shard: int, shards: int) -> Iterator[Session]:
        order = list(self.paths)
        random.Random(f"{self.seed}:{self.epoch}").shuffle(order)  # same on all
        if len(order) >= WHOLE_FILES_PER_SHARD * shards:
            for path in order[shard::shards]:
                yield from self._file(path)
            return
        for path in order:
            yield from self._file(path)[shard::shards]

    def __iter__(self) -> Iterator[Session]:
        shard, shards = self._shard()
        rng = random.Random(f"{self.seed}:{self.epoch}:{shard}")
        return shuffled(self._sessions(shard, shards), self.shuffle_buffer, rng)


class WindowStream(IterableDataset[TrainWindows]):
    """A session stream encoded into chunks of training windows
    (``training.batching.build_windows``), in the loader's worker processes."""

    def __init__(
        self,
        sessions: SessionStream,
        vocab: Vocabulary,
        max_seq_len: int,
        chunk_sessions: int = CHUNK_SESSIONS,
    ) -> None:
        self.sessions = sessions
        self.vocab = vocab
        self.max_seq_len = max_seq_len
        self.chunk_sessions = chunk_sessions

    def set_epoch(self, epoch: int) -> None:
        self.sessions.set_epoch(epoch)

    def __iter__(self) -> Iterator[TrainWindows]:
        chunk: list[Session] = []
        for session in self.sessions:
            if len(session) >= 2:  # shorter ones have no target (build_windows)
                chunk.append(session)
            if len(chunk) == self.chunk_sessions:
                yield build_windows(chunk, self.vocab, self.max_seq_len)
                chunk = []
        if chunk:
            yield build_windows(chunk, self.vocab, self.max_seq_len)


@dataclass
class StreamSummary:
    """What the first pass over a stream learns: the training split's vocabulary and
    counts, and a bounded sample of the held-out sessions as examples."""

    vocab: Vocabulary
    counts: Counter[str]  # events per training track, every track (rare ones too)
    plays: Counter[str]  # non-skipped events per training track
    num_events: int  # training events
    num_windows: int  # training windows of ``max_seq_len`` (steps are counted on it)
    validation: list[EvalExample] = field(default_factory=list)
    test: list[EvalExample] = field(default_factory=list)
    held_out_sessions: dict[str, int] = field(default_factory=dict)  # seen per part

    def popularity(self) -> dict[str, int]:
        """``popularity.json``: plays per vocabulary track, most played first."""
        plays = {track: self.plays[track] for track in self.vocab.track_ids}
        return dict(sorted(plays.items(), key=lambda item: (-item[1], item[0])))


def first_pass(
    paths: Sequence[Path],
    config: StreamConfig,
    max_seq_len: int,
    format: str | None = None,
) -> StreamSummary:
    """One pass over ``paths``, a file in memory at a time: counts of the training
    sessions' tracks, their vocabulary (``config.vocab``, or the tracks seen at least
    ``min_count`` times, most frequent first), and the first ``max_eval_sessions``
    held-out sessions of each part in file order.

    Rarer tracks are out of the vocabulary: they read as the OOV bucket, whose
    embedding their inputs train.
    """
    counts: Counter[str] = Counter()
    plays: Counter[str] = Counter()
    held: dict[str, list[Session]] = {"validation": [], "test": []}
    seen = {"validation": 0, "test": 0}
    num_events = num_windows = 0
    for path in paths:
        for session in load_sessions(path, format):
            part = held_out_part(session.session_id)
            if part != "train":
                seen[part] += 1
                if len(held[part]) < config.max_eval_sessions:
                    held[part].append(session)
                continue
            counts.update(session.track_ids)
            events = zip(session.track_ids, session.skipped, strict=True)
            plays.update(track for track, skipped in events if not skipped)
            num_events += len(session)
            if len(session) >= 2:  # shorter ones make no window (build_windows)
                num_windows += -(-len(session) // max_seq_len)
    if config.vocab is not None:
        vocab = Vocabulary.load(config.vocab)
    else:
        kept = sorted(
            (track for track, count in counts.items() if count >= config.min_count),
            key=lambda track: (-counts[track], track),
        )
        vocab = Vocabulary(tuple(kept))
    return StreamSummary(
        vocab=vocab,
        counts=counts,
        plays=plays,
        num_events=num_events,
        num_windows=num_windows,
        validation=[e for s in held["validation"] for e in session_examples(s)],
        test=[e for s in held["test"] for e in session_examples(s)],
        held_out_sessions=seen,
    )
