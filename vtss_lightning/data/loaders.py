"""Batches sliced from device-resident tensors, without per-item Python.

Training loaders reshuffle per pass from their own seed; evaluation loaders keep the
order and read :data:`~vtss_lightning._random.EVAL_CHUNK_ROWS` rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from vtss_lightning._random import EVAL_CHUNK_ROWS


class TensorBatches:
    """An iterable of ``(x, y)`` batches sliced from tensors already on the device.

    ``DataLoader(TensorDataset)`` collates item by item in Python, which costs more
    than a training step of a small model; slicing one permutation per epoch keeps
    the hot path to a single index operation. Each pass reshuffles with
    ``seed + pass`` so runs repeat exactly regardless of the global RNG.

    Parameters
    ----------
    x, y
        Features and labels, same first dimension, on the same device.
    batch_size
        Rows per batch; ``None`` yields the whole set as one batch.
    shuffle
        Reshuffle every pass.
    seed
        Base seed of the shuffling.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int | None,
        shuffle: bool,
        seed: int = 0,
    ) -> None:
        self.x, self.y = x, y
        n = len(y)
        self.batch_size = n if batch_size is None or batch_size >= n else int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self._passes = 0

    def __len__(self) -> int:
        n = len(self.y)
        return 0 if n == 0 else -(-n // self.batch_size)

    def next_order(self) -> torch.Tensor | None:
        """This pass's row permutation (``None``: keep the order); advances the pass."""
        n = len(self.y)
        order = None
        if self.shuffle and n > self.batch_size:
            gen = torch.Generator().manual_seed(self.seed + self._passes)
            order = torch.randperm(n, generator=gen).to(self.x.device, non_blocking=True)
        self._passes += 1
        return order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = self.next_order()
        for start in range(0, n, self.batch_size):
            if order is None:
                yield (
                    self.x[start : start + self.batch_size],
                    self.y[start : start + self.batch_size],
                )
            else:  # gathered per batch: a shuffled copy of the whole set would double it
                rows = order[start : start + self.batch_size]
                yield self.x[rows], self.y[rows]


def eval_batches(x: torch.Tensor, y: torch.Tensor) -> TensorBatches:
    """Unshuffled batches for validation and test: big enough to be fast, small enough to fit."""
    return TensorBatches(x, y, batch_size=EVAL_CHUNK_ROWS, shuffle=False)


class FeatureBatches:
    """Unshuffled feature-only batches, for ``trainer.predict``.

    A module's default ``predict_step`` calls ``self(batch)``, so predict batches hold
    the features alone.
    """

    def __init__(self, x: torch.Tensor, batch_size: int = EVAL_CHUNK_ROWS) -> None:
        self.x, self.batch_size = x, int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.x), self.batch_size):
            yield self.x[start : start + self.batch_size]
