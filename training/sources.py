"""What the trainer trains on: the windows of an in-memory split, or a session stream.

Both give the loop (``training.trainer.train``) the same things: each epoch's batches,
the number of steps an epoch takes, every training track's count (the popularity
sampler, the log-Q correction and the rare tracks of ``[loss] oov_share``) and
``popularity.json``. Batching is one code path (``training.batching``): an in-memory
epoch is drawn by ``epoch_inputs`` and cut by ``trimmed_batch`` whole, a stream's
chunks of windows one after the other.

- :class:`MemorySource` holds every training window ([N, W] tensors, built once);
  under torchrun every rank draws the same epoch and takes its share of each global
  batch (the behaviour of every run before streaming).
- :class:`StreamSource` reads this rank's shard of a streamed log each epoch
  (``training.stream``): each rank makes its own batches of its share of
  ``batch_size`` rows, so the global batch is ``batch_size`` as in memory, and the
  ranks stop together at the first step one of them has no batch for. An epoch's
  steps are then known in advance only from the first pass's window count:
  ``steps_per_epoch`` is that estimate (the schedule's length and the progress bar).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from skiprec.vocab import Vocabulary
from training.batching import (
    Batch,
    TrainWindows,
    build_windows,
    epoch_batches,
    num_batches,
    rare_tracks,
    streamed_batches,
)
from training.config import TrainConfig
from training.data import Session
from training.distributed import DistContext, while_every_rank_has
from training.splits import popularity as play_counts
from training.stream import SessionStream, StreamConfig, StreamSummary, WindowStream


class TrainSource(Protocol):
    """The training data as the loop sees it."""

    @property
    def num_windows(self) -> int: ...

    def steps_per_epoch(self, context: DistContext) -> int:
        """Steps of one epoch (exact in memory, estimated for a stream)."""
        ...

    def batches(
        self, epoch: int, generator: torch.Generator, context: DistContext
    ) -> Iterator[Batch]:
        """This rank's batches of ``epoch``; ``generator`` draws the in-memory epoch."""
        ...

    def track_counts(self) -> Tensor:
        """int64 [V]: training events per vocabulary index (specials included)."""
        ...

    def popularity(self) -> dict[str, int]:
        """``popularity.json``: plays per training track, most played first."""
        ...


@dataclass
class MemorySource:
    """Every training window in memory, re-batched each epoch."""

    windows: TrainWindows
    config: TrainConfig
    sessions: Sequence[Session]  # the training sessions (for popularity.json)
    vocab_size: int
    _rare: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Every training event is in exactly one window: these are its counts.
        counts = torch.bincount(self.windows.tracks.flatten())
        self._rare = rare_tracks(counts, self.config.loss.oov_max_count)

    @classmethod
    def build(
        cls, sessions: Sequence[Session], vocab: Vocabulary, config: TrainConfig
    ) -> MemorySource:
        windows = build_windows(sessions, vocab, config.model.max_seq_len)
        return cls(windows, config, sessions, vocab.size)

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    def steps_per_epoch(self, context: DistContext) -> int:
        return num_batches(
            len(self.windows), self.config.optim.batch_size, context.world_size
        )

    def batches(
        self, epoch: int, generator: torch.Generator, context: DistContext
    ) -> Iterator[Batch]:
        return epoch_batches(self.windows, self.config, generator, context, self._rare)

    def track_counts(self) -> Tensor:
        tracks = self.windows.tracks.flatten()
        return torch.bincount(tracks, minlength=self.vocab_size)[: self.vocab_size]

    def popularity(self) -> dict[str, int]:
        return play_counts(self.sessions)


class StreamSource:
    """This rank's shard of a streamed log, read anew every epoch."""

    def __init__(
        self,
        paths: Sequence[Path],
        summary: StreamSummary,
        config: TrainConfig,
        stream_config: StreamConfig,
        context: DistContext,
        format: str | None = None,
    ) -> None:
        self.summary = summary
        self.config = config
        self.stream_config = stream_config
        sessions = SessionStream(
            paths,
            format,
            rank=context.rank,
            world_size=context.world_size,
            shuffle_buffer=stream_config.shuffle_buffer,
            seed=config.optim.seed,
            part="train",
        )
        self.windows = WindowStream(sessions, summary.vocab, config.model.max_seq_len)
        # This rank's share of a global batch, as torch.tensor_split cuts it.
        size, rest = divmod(config.optim.batch_size, context.world_size)
        self.batch_rows = max(1, size + (context.rank < rest))
        self._counts = self._index_counts()
        self._rare = rare_tracks(self._counts, config.loss.oov_max_count)

    def _index_counts(self) -> Tensor:
        vocab = self.summary.vocab
        counts = torch.zeros(vocab.size, dtype=torch.int64)
        for track, count in self.summary.counts.items():
            counts[vocab.index(track)] += count  # rare tracks add up at OOV
        return counts

    @property
    def num_windows(self) -> int:
        return self.summary.num_windows

    def steps_per_epoch(self, context: DistContext) -> int:
        return max(1, self.summary.num_windows // self.config.optim.batch_size)

    def batches(
        self, epoch: int, generator: torch.Generator, context: DistContext
    ) -> Iterator[Batch]:
        self.windows.set_epoch(epoch)
        workers = self.stream_config.loader_workers
        seed = f"{self.config.optim.seed}:{epoch}:{context.rank}"
        chunks = DataLoader(
            self.windows,
            batch_size=None,
            num_workers=workers,
            # Two chunks ahead per worker; the default, stated: it bounds memory.
            prefetch_factor=2 if workers else None,
            # The loader draws a seed for its workers (which draw nothing from it)
            # from this generator, not from torch's global one, whose draws (the
            # dropout masks) then stay those of an uninterrupted run on a resume.
            generator=torch.Generator().manual_seed(0),
        )
        batches = streamed_batches(
            chunks, self.config, self.batch_rows, seed, self._rare
        )
        return while_every_rank_has(batches, context)

    def track_counts(self) -> Tensor:
        return self._counts

    def popularity(self) -> dict[str, int]:
        return self.summary.popularity()
