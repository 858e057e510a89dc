"""What ``parallel`` keeps of a split so that its members train after the engine left it.

Under the engine's two-phase call (:class:`~.base.StagedScorer`) every split is
staged before any member trains, so a member cannot read ``dm.active``. It reads its
:class:`SplitView` instead: the split's real training rows followed, per class in
index order, by that class's pool prefix at the largest size staged there (the layout
of ``VTSSDataModule.training_tensors``: a view of the split's pool buffer, whose head
is the real rows, else copied once per split), plus the split's validation rows. A
member's training set is an index into those rows (:class:`IndexedBatches`), so no
member holds a copy of its own, and the split's generators and preprocessing can be
freed once the engine leaves it (its rows and pool live on in the view).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import torch

from vtss_lightning.data.datamodule import SyntheticAugmentationDataModule as VTSSDataModule
from vtss_lightning.data.image import ImageDataModule
from vtss_lightning.data.loaders import TensorBatches, eval_batches
from vtss_lightning.data.row_layout import training_rows
from vtss_lightning.search.strategies.base import state_key

#: Share of the memory that stacked training may use by default (GPU: free memory;
#: CPU: available memory), when ``memory_budget_mb`` is not given.
DEFAULT_SHARE = {"cuda": 0.7, "cpu": 0.5}

T = TypeVar("T")


class IndexedBatches:
    """A member's training batches: rows ``index`` of its split's staged rows.

    Replays the DataModule's loader (:class:`~vtss_lightning.data.loaders.TensorBatches`
    over real rows + pool prefix, reshuffled each pass with ``seed + pass``) without a
    copy of the member's rows: :meth:`rows` gathers one batch from the split's rows.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        index: torch.Tensor,
        batch_size: int | None,
        seed: int,
    ) -> None:
        self.source_x, self.source_y, self.index = x, y, index
        n = self.n_rows = len(index)
        contiguous = n > 0 and bool((index.diff() == 1).all())
        self._start = int(index[0]) if contiguous else None  # rows start:start + n
        self.batch_size = n if batch_size is None or batch_size >= n else int(batch_size)
        self.shuffle = True
        self.seed = seed
        self._passes = 0

    def __len__(self) -> int:
        return 0 if self.n_rows == 0 else -(-self.n_rows // self.batch_size)

    def next_order(self) -> torch.Tensor | None:
        """This pass's row permutation (``None``: keep the order), as TensorBatches draws it."""
        order = None
        if self.shuffle and self.n_rows > self.batch_size:
            gen = torch.Generator().manual_seed(self.seed + self._passes)
            order = torch.randperm(self.n_rows, generator=gen).to(self.index.device)
        self._passes += 1
        return order

    def rows(
        self, order: torch.Tensor | None, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``start:stop`` of this pass (``order`` from :meth:`next_order`)."""
        if order is None and self._start is not None:  # a view, as the loader's slice
            a, b = self._start + start, self._start + min(stop, self.n_rows)
            return self.source_x[a:b], self.source_y[a:b]
        index = self.index[start:stop]
        if order is not None:
            index = self.index.index_select(0, order[start:stop])
        return self.source_x.index_select(0, index), self.source_y.index_select(0, index)

    def head(self, n: int) -> torch.Tensor:
        """The member's first ``n`` feature rows (a sample for memory estimates)."""
        return self.source_x[self.index[:n]]

    @property
    def x(self) -> torch.Tensor:
        """The member's feature rows, gathered (a copy: for checks, not for training)."""
        return self.source_x[self.index]

    @property
    def y(self) -> torch.Tensor:
        return self.source_y[self.index]

    def joint_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(split rows, split labels, index)``: what a joint solve shares per split."""
        return self.source_x, self.source_y, self.index


def batch_of(loader, order: torch.Tensor | None, start: int, stop: int):
    """Rows ``start:stop`` of a pass over ``loader`` (indexed or a plain TensorBatches)."""
    if isinstance(loader, IndexedBatches):
        return loader.rows(order, start, stop)
    if order is None:
        return loader.x[start:stop], loader.y[start:stop]
    rows = order[start:stop]
    return loader.x.index_select(0, rows), loader.y.index_select(0, rows)


def head_rows(loader, n: int) -> torch.Tensor:
    """The first ``n`` feature rows of a member's training set."""
    return loader.head(n) if isinstance(loader, IndexedBatches) else loader.x[:n]


def row_count(loader) -> int:
    return loader.n_rows if isinstance(loader, IndexedBatches) else len(loader.y)


def joint_rows(loader) -> tuple[torch.Tensor, ...]:
    """A member's rows for :class:`~._full_batch.JointObjective`: shared, else its own."""
    if isinstance(loader, IndexedBatches):
        return loader.joint_rows()
    return loader.x, loader.y


class SplitView:
    """One split as its members see it, valid after the engine has left the split.

    Quacks like the DataModule inside that split for what training and scoring read
    (``active`` with the rows, ``num_classes``, ``n_features``, ``make_train_loader``,
    ``val_dataloader``); any other attribute is the DataModule's own (those do not
    depend on the split). ``index``: which split of the search (``None``: the one a
    single-split call trains).

    A DataModule with a loader of its own (a Ray trial's staged split, a subclass that
    overrides ``make_train_loader``) is asked for each member's loader while the split
    is active (its rows copied per member, as before stacking across folds).
    """

    def __init__(
        self, dm, most: Mapping[int, int], device: torch.device, index: int | None = None
    ) -> None:
        split = dm.active
        self._dm, self.index, self.device = dm, index, device
        self.name = split.name
        self.num_classes = int(dm.num_classes)
        self.class_counts = list(split.class_counts)
        self.batch_size, self.seed = int(dm.batch_size), int(getattr(dm, "seed", 0))
        self.n_real = len(split.y_train)
        self.pooled = replays_own_loader(dm)
        most = {int(k): int(m) for k, m in most.items() if m > 0} if self.pooled else {}
        self.offsets = _offsets(self.n_real, most)
        blocks = dm.prepare_pool(most).prefixes(most) if most else []  # may move x_train
        x, y = split.x_train, split.y_train
        if blocks:  # real rows, then each class's largest prefix: a view of the pool's
            x, y = training_rows(blocks, head=(x, y))  # buffer, else one copy per split
        self.x, self.y = x.to(device), y.to(device)
        self.x_val, self.y_val = split.x_val.to(device), split.y_val.to(device)
        self._loaders: dict[tuple, Any] = {}  # own loaders of a DataModule, by candidate

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_dm":
            raise AttributeError(name)
        return getattr(self._dm, name)

    @property
    def active(self) -> SplitView:
        return self

    @property
    def x_train(self) -> torch.Tensor:
        return self.x[: self.n_real]

    @property
    def y_train(self) -> torch.Tensor:
        return self.y[: self.n_real]

    @property
    def n_features(self) -> int:
        return int(self.x.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one input row: members stack only with members of the same shape."""
        return tuple(self.x.shape[1:])

    transform = None  # stacking was checked on the real DataModule

    def rows_of(self, sizes: Mapping[int, int]) -> torch.Tensor:
        """Indices of the candidate's rows (real rows, then its prefix per class)."""
        parts = [torch.arange(self.n_real, device=self.device)]
        for k, m in sorted((int(k), int(m)) for k, m in sizes.items()):
            if m > 0:
                start, available = self.offsets.get(k, (0, 0))
                if m > available:
                    raise ValueError(f"class {k}: {m} synthetic rows asked, {available} staged")
                parts.append(torch.arange(start, start + m, device=self.device))
        return torch.cat(parts)

    def loader(self, sizes: Mapping[int, int], full_batch: bool = False):
        """The member's batches: indexed rows, or the DataModule's own loader on the device."""
        batch = None if full_batch else self.batch_size
        if self.pooled:
            return IndexedBatches(self.x, self.y, self.rows_of(sizes), batch, self.seed)
        loader = self._dm.make_train_loader(sizes, full_batch=full_batch)
        loader.x, loader.y = loader.x.to(self.device), loader.y.to(self.device)
        self._loaders[state_key(sizes)] = copy.copy(loader)  # pristine, for a later fit
        return loader

    def make_train_loader(self, sizes: Mapping[int, int], full_batch: bool = False):
        """The candidate's loader as the DataModule gives it, for a fit (its rows
        copied; a DataModule's own loader as staged, the split need not be active)."""
        if not self.pooled:
            staged = self._loaders.get(state_key(sizes))
            if staged is None:
                return self._dm.make_train_loader(sizes, full_batch=full_batch)
            return copy.copy(staged)
        rows = self.rows_of(sizes)
        batch = None if full_batch else self.batch_size
        return TensorBatches(self.x[rows], self.y[rows], batch, shuffle=True, seed=self.seed)

    def val_dataloader(self) -> TensorBatches:
        return eval_batches(self.x_val, self.y_val)


def replays_own_loader(dm) -> bool:
    """Whether the DataModule's training loader is VTSS's own (real rows then the pool
    prefix, :meth:`~VTSSDataModule.training_tensors`, in plain TensorBatches), which an
    index into the staged rows replays; a subclass's own loader is asked instead."""
    cls = type(dm)
    loaders = (VTSSDataModule.make_train_loader, ImageDataModule.make_train_loader)
    return (
        isinstance(dm, VTSSDataModule)
        and getattr(dm, "transform", None) is None
        and cls.make_train_loader in loaders
        and cls.training_tensors is VTSSDataModule.training_tensors
    )


def _offsets(n_real: int, most: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """Where each class's prefix starts in the staged rows, and how many rows it has."""
    out, start = {}, n_real
    for k, m in sorted(most.items()):
        out[k] = (start, m)
        start += m
    return out


def largest_sizes(jobs: Iterable[tuple[int, Mapping[int, int]]]) -> dict[int, int]:
    """Per class, the largest size any job asks for (what a split stages)."""
    most: dict[int, int] = {}
    for _, sizes in jobs:
        for k, m in sizes.items():
            most[int(k)] = max(most.get(int(k), 0), int(m))
    return most


def grouped(items: Iterable[T], key: Callable[[T], Any]) -> list[list[T]]:
    """``items`` grouped by ``key``, groups in order of first appearance, order kept."""
    groups: dict[Any, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def default_budget_mb(device: torch.device) -> float | None:
    """Memory stacked training may use when not told (:data:`DEFAULT_SHARE`), or None."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return DEFAULT_SHARE["cuda"] * free / 2**20
    available = available_memory_bytes()
    return None if available is None else DEFAULT_SHARE["cpu"] * available / 2**20


def available_memory_bytes() -> int | None:
    """The host memory new allocations can take (``MemAvailable``: free plus reclaimable
    page cache), else the free pages, else ``None``."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
