"""The synthetic pool: drawn per class in seeded chunks, read by prefixes.

:class:`PoolBuilder` fits one generator per class on a split's training rows,
samples it, and checks what comes back (count, width, finiteness) before a row can
reach a model; :class:`SyntheticPool` keeps the draw and serves its prefixes.

A class's pool is drawn in chunks of ``POOL_CHUNK_ROWS`` rows, chunk ``j`` with its
own seed (:func:`~vtss_lightning._random.pool_chunk_seed`), and cut to the size
asked for. Many generators (SMOTE, jitter, the Gaussian, TVAE, the deep ones) draw
differently for a different row count, but a chunk never changes, so for one seed
the first ``m`` rows are the same whether ``m`` or any ``M > m`` rows are asked for:
candidates, a run forced to one size and a resumed search train on the same rows.

A *conditional* generator (``generator.conditional``) is fitted once per split, on
the training rows of every class with their labels, and each class is drawn from
that one model in the same chunks (``sample(c, seed, label=k)`` with the same chunk
seeds), so its pools are nested in the same way.

The pool is laid out right after the split's real training rows in one float32
buffer (``[x_train | class rows, by class index]``; the split's ``x_train`` becomes
the buffer's head), so a candidate's training set, real rows then its prefix per
class, is a view of that buffer whenever its rows lie back to back there (one
minority class: always), not a copy (:func:`~vtss_lightning.data.row_layout.training_rows`). The buffer is written
only while it is built; a larger pool is a new buffer, so a view handed out earlier
keeps its rows.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from vtss_lightning._random import (
    GENERATOR_FIT_SALT,
    POOL_CHUNK_ROWS,
    derive_seed,
    pool_chunk_seed,
    round_half_up,
)
from vtss_lightning.data.features import Features, as_frame, take_rows
from vtss_lightning.data.labels import label_text
from vtss_lightning.data.row_layout import joined_rows, stack_rows
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators.base import ClassView, Rows, SyntheticGenerator

if TYPE_CHECKING:
    from vtss_lightning.data.split import PreparedSplit


def ratio_to_sizes(ratio: float, gaps: Mapping[int, int]) -> dict[int, int]:
    """Per-class synthetic sizes ``round(ratio * gap_k)`` (halves round up)."""
    if ratio < 0 or not np.isfinite(ratio):
        raise VTSSError(f"synthetic ratio must be a finite number >= 0, got {ratio}")
    return {k: round_half_up(ratio * g) for k, g in gaps.items() if g > 0}


def check_sizes(sizes: Mapping[int, int], num_classes: int) -> dict[int, int]:
    """``sizes`` as ``{class index: rows}`` of ints, each index valid and each size >= 0."""
    clean: dict[int, int] = {}
    for k, m in sizes.items():
        if not 0 <= int(k) < num_classes:
            raise VTSSError(f"class index {k} out of range for {num_classes} classes")
        if int(m) < 0:
            raise VTSSError(f"synthetic size for class {k} must be >= 0, got {m}")
        clean[int(k)] = int(m)
    return clean


class SyntheticPool:
    """Synthetic rows per class, sampled once; candidate sizes read prefixes.

    Taking prefixes of one draw gives nested candidate sets (common random numbers):
    the loss curve across sizes then reflects the size, not fresh sampling noise, and
    the generator is fitted and sampled exactly once per class.

    Parameters
    ----------
    rows
        Encoded synthetic rows per class index, each of shape ``(m_k, d)``.
    empty
        A ``(0, d)`` tensor on the rows' device, what :meth:`take` returns when every
        size is 0 (a 1-d empty tensor when ``None``).
    head
        The real training rows the class rows follow in one buffer (``None``: the rows
        stand alone); the split's ``x_train`` is then this tensor.
    """

    def __init__(
        self,
        rows: Mapping[int, torch.Tensor],
        empty: torch.Tensor | None = None,
        head: torch.Tensor | None = None,
    ) -> None:
        self.rows = dict(rows)
        self.empty = empty
        self.head = head

    @property
    def capacity(self) -> dict[int, int]:
        """Rows available per class."""
        return {k: len(v) for k, v in self.rows.items()}

    def covers(self, sizes: Mapping[int, int]) -> bool:
        """Whether every requested size fits in the pool."""
        cap = self.capacity
        return all(m == 0 or cap.get(k, 0) >= m for k, m in sizes.items())

    def prefixes(self, sizes: Mapping[int, int]) -> list[tuple[int, torch.Tensor]]:
        """``(k, first sizes[k] rows of class k)`` for every size > 0, by class index:
        views of the pool, no copy."""
        out = []
        for k, m in sorted(sizes.items()):
            if m == 0:
                continue
            available = len(self.rows.get(k, ()))
            if m > available:
                raise VTSSError(
                    f"synthetic size {m} for class {k} exceeds the pool ({available} rows); "
                    "prepare the pool at the largest candidate size first"
                )
            out.append((k, self.rows[k][:m]))
        return out

    def take(self, sizes: Mapping[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """First ``sizes[k]`` rows of each class, with their labels (a new tensor)."""
        blocks = self.prefixes(sizes)
        if not blocks:
            empty = torch.empty(0) if self.empty is None else self.empty
            return empty, torch.empty(0, dtype=torch.long, device=empty.device)
        return stack_rows(blocks)

    def to(self, device: torch.device) -> SyntheticPool:
        """The pool on ``device``; a buffer (head and class rows) moves as one tensor, so
        its rows stay back to back there."""
        empty = None if self.empty is None else self.empty.to(device)
        buffer = self._buffer()
        if buffer is None:
            head = None if self.head is None else self.head.to(device)
            return SyntheticPool({k: v.to(device) for k, v in self.rows.items()}, empty, head)
        moved = buffer.to(device)
        assert self.head is not None  # a buffer starts with the head
        rows, start = {k: v.to(device) for k, v in self.rows.items() if not len(v)}, len(self.head)
        for k in self._classes():
            rows[k] = moved[start : start + len(self.rows[k])]
            start += len(self.rows[k])
        return SyntheticPool(rows, empty, moved[: len(self.head)])

    def _classes(self) -> list[int]:
        return sorted(k for k, v in self.rows.items() if len(v))

    def _buffer(self) -> torch.Tensor | None:
        """The head and every class's rows as one view, when they are laid out so."""
        if self.head is None or not len(self.head) or not self._classes():
            return None
        return joined_rows([self.head, *(self.rows[k] for k in self._classes())])


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a new tensor on ``device`` can still take (``None``: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def check_pool_fits(sizes: Mapping[int, int], x_train: torch.Tensor) -> None:
    """Refuse, in one line, a pool that cannot fit in memory (before any row is drawn)."""
    rows = sum(max(0, int(m)) for m in sizes.values())
    width = int(x_train[0].numel()) if len(x_train) else 0
    need = rows * width * x_train.element_size()
    free = free_memory_bytes(x_train.device)
    if free is not None and need > free:
        gib = 2**30
        raise VTSSError(
            f"the synthetic pool would need {need / gib:.1f} GiB ({rows} rows x {width} "
            f"features) on {x_train.device}, more than the {free / gib:.1f} GiB free; "
            "ask for smaller sizes (ratios=, sizes=, max_ratio=)"
        )


def encoded_columns(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The raw columns preprocessing encodes (``columns``; empty: all of them), so a frame
    generator never learns a column that is dropped (an ID) and samples only the rest."""
    keep = set(columns)
    if not keep or keep.issuperset(frame.columns):
        return frame
    return frame[[c for c in frame.columns if c in keep]]


class PoolBuilder:
    """Fits a split's generators (one copy of the template per class) and draws its pool.

    The fitted generators and the pool are kept on the split (they belong to its
    training rows); the builder holds what every split shares. Class ``k``'s
    generator is fitted with seed ``derive_seed(seed, GENERATOR_FIT_SALT, k)`` and
    sampled in chunks of :attr:`chunk_rows` rows, chunk ``j`` with seed
    ``pool_chunk_seed(seed, k, j)``; rows are drawn on the device of the split's
    tensors.

    A conditional template is instead fitted once per split, with seed
    ``derive_seed(seed, GENERATOR_FIT_SALT, num_classes)``, on every training row of
    the split and its label (:meth:`fit_labelled_generator`); ``split.generators[k]``
    is then that model's :class:`~vtss_lightning.generators.base.ClassView` of class
    ``k``, sampled with the same chunk seeds.

    Parameters
    ----------
    generator
        Template generator, deep-copied for every fit.
    features
        Raw development features, or a function returning them (the DataModule's,
        which loads them again when it has let them go); frame generators are fitted
        on these rows.
    classes
        Class labels by index, for messages.
    seed
        The DataModule's seed.

    Attributes
    ----------
    chunk_rows
        Rows per seeded chunk (``POOL_CHUNK_ROWS``); another value gives other rows.
    on_generator_fitted
        Called with ``(who, seconds)`` after each class's generator is fitted (the
        search shows it live: deep generators can take minutes).
    """

    def __init__(
        self,
        generator: SyntheticGenerator,
        features: Features | Callable[[], Features],
        classes: np.ndarray,
        seed: int,
    ) -> None:
        self.generator = generator
        self._features = features
        self.classes = classes
        self.seed = seed
        self.chunk_rows = POOL_CHUNK_ROWS
        self.on_generator_fitted: Callable[[str, float], None] | None = None

    @property
    def features(self) -> Features:
        """The raw development features (read only by frame generators' fits)."""
        return self._features() if callable(self._features) else self._features

    def prepare(self, split: PreparedSplit, sizes: Mapping[int, int]) -> SyntheticPool:
        """Fit the generators (once per split) and draw the pool at ``sizes``.

        The pool is reused while it covers the requested sizes; a larger request keeps
        the whole chunks already drawn and draws the rest, so the rows a size gets do
        not depend on which sizes were asked for before. A pool drawn anew is one new
        buffer after a copy of the real training rows (:meth:`_build`).
        """
        if split.pool.covers(sizes) and split.pool.empty is not None:
            return split.pool
        check_pool_fits(sizes, split.x_train)
        capacity = {k: len(v) for k, v in split.pool.rows.items() if len(v)}
        for k, m in sizes.items():
            if m > capacity.get(k, 0):
                capacity[k] = m
        if capacity:
            self._build(split, capacity)
        else:  # nothing to draw: no buffer (and no copy of the real rows)
            x_train = split.x_train
            split.pool = SyntheticPool({}, empty=x_train.new_empty((0, *x_train.shape[1:])))
        return split.pool

    def _build(self, split: PreparedSplit, capacity: Mapping[int, int]) -> None:
        """Lay out ``[x_train | class rows, by class index]`` in one new float32 buffer and
        fill it class by class (rows already drawn copied, the rest drawn): the
        candidates' training sets are then views of it.

        The buffer's head (a copy of the real rows) is the split's ``x_train`` from the
        start, so the old tensor goes before the pool is drawn; the old pool goes once
        the new one is complete (a failed draw leaves it as it was, ``x_train`` then the
        old pool's head, else a compact copy). Real rows of another dtype or row shape
        than the pool's cannot share its buffer; the pool is then one buffer alone.
        """
        x_train = split.x_train
        empty = x_train.new_empty((0, *x_train.shape[1:]))
        shared = x_train.dim() == 2 and x_train.dtype == torch.float32
        n = len(x_train) if shared else 0
        shape = (n + sum(capacity.values()), x_train.shape[1])
        buffer = torch.empty(shape, dtype=torch.float32, device=x_train.device)
        head = buffer[:n] if shared else None
        if head is not None:
            head.copy_(x_train)
            split.x_train = head
        del x_train
        rows, start = {}, n
        try:
            for k in sorted(capacity):
                rows[k] = buffer[start : start + capacity[k]]
                self._fill_class(split, k, rows[k], split.pool.rows.get(k))
                start += capacity[k]
        except BaseException:
            if head is not None:  # let the unfinished buffer go
                old = split.pool.head
                split.x_train = head.clone() if old is None else old
            raise
        split.pool = SyntheticPool(rows, empty=empty, head=head)

    def _fill_class(
        self, split: PreparedSplit, k: int, out: torch.Tensor, drawn: torch.Tensor | None
    ) -> None:
        """Class ``k``'s first ``len(out)`` pool rows into ``out``: the rows of ``drawn``
        (all of them when they suffice, else its whole chunks), then new chunks.

        Filled chunk by chunk, so a pool costs its own size plus one chunk (a list of
        chunks joined by ``torch.cat`` cost twice the pool).
        """
        m, c = len(out), self.chunk_rows
        if drawn is not None and len(drawn) >= m:
            out.copy_(drawn[:m])
            return
        generator = split.generators.get(k) or self._fit_class(split, k)
        split.generators[k] = generator
        where = f" for class {label_text(self.classes[k])}"
        kept = 0 if drawn is None else len(drawn) // c
        if drawn is not None:
            out[: kept * c] = drawn[: kept * c]
        for j in range(kept, -(-m // c)):  # ceil(m / c) chunks in all
            rows = self.sample(split, generator, c, pool_chunk_seed(self.seed, k, j), where)
            stop = min(m, (j + 1) * c)
            out[j * c : stop] = rows[: stop - j * c]

    def _fit_class(self, split: PreparedSplit, k: int) -> SyntheticGenerator:
        """Class ``k``'s generator, fitted on all its training rows with its own seed (a
        conditional template: the view of class ``k`` of the split's one shared model)."""
        if self.generator.conditional:
            return self._conditional_model(split).for_class(k)
        positions = torch.nonzero(split.y_train.cpu() == k).flatten().numpy()
        where = f"class {label_text(self.classes[k])} after the split"
        t0 = time.perf_counter()
        generator = self.fit_generator(
            split, positions, derive_seed(self.seed, GENERATOR_FIT_SALT, k), where
        )
        if self.on_generator_fitted is not None:
            who = f"class {label_text(self.classes[k])} ({len(positions)} rows, {split.name})"
            self.on_generator_fitted(who, time.perf_counter() - t0)
        return generator

    def _conditional_model(self, split: PreparedSplit) -> SyntheticGenerator:
        """The split's one conditional model: fitted on its first use, then shared."""
        for view in split.generators.values():
            if isinstance(view, ClassView):
                return view.generator
        every = np.arange(len(split.y_train))
        t0 = time.perf_counter()
        seed = derive_seed(self.seed, GENERATOR_FIT_SALT, split.num_classes)
        model = self.fit_labelled_generator(
            split, every, seed, f"the training rows of {split.name}"
        )
        if self.on_generator_fitted is not None:
            who = f"all classes, one conditional model ({len(every)} rows, {split.name})"
            self.on_generator_fitted(who, time.perf_counter() - t0)
        return model

    def fit_labelled_generator(
        self, split: PreparedSplit, positions: np.ndarray, seed: int, where: str
    ) -> SyntheticGenerator:
        """A fresh copy of a conditional template fitted on ``split``'s training rows at
        ``positions`` (any classes) and their labels; the classes it saw can be sampled."""
        generator = copy.deepcopy(self.generator).to(split.x_train.device)
        rows = self._rows(split, generator, positions)
        labels = split.y_train.cpu()[torch.as_tensor(positions, dtype=torch.long)]
        if len(rows) < generator.min_rows:
            raise VTSSError(
                f"{where}: {len(rows)} training row(s), but {generator.name} needs at least "
                f"{generator.min_rows}"
            )
        return generator.fit_labelled(
            rows, labels, split.preprocessor.schema, seed=seed, num_classes=split.num_classes
        )

    def _rows(
        self, split: PreparedSplit, generator: SyntheticGenerator, positions: np.ndarray
    ) -> Rows:
        """``split``'s training rows at ``positions``: encoded, or raw for a frame generator."""
        if generator.input_kind == "frame":
            frame = as_frame(take_rows(self.features, split.train_index[positions]))
            return encoded_columns(frame, split.preprocessor.columns)
        return split.x_train[torch.as_tensor(positions, device=split.x_train.device)]

    def fit_generator(
        self, split: PreparedSplit, positions: np.ndarray, seed: int, where: str
    ) -> SyntheticGenerator:
        """A fresh copy of the template generator fitted on some of ``split``'s training rows.

        ``positions`` index ``split.x_train``; frame generators get the same rows raw.
        ``where`` names the rows in the error raised when there are too few of them.

        For a conditional template the rows at ``positions`` must be of one class
        ``k``: the model is fitted on them *and every training row of the other
        classes* (a conditional model learns all classes; what the caller holds out of
        class ``k`` stays out) and class ``k``'s :class:`ClassView` is returned, which
        samples like a per-class generator (TG-VTSS's cross-fitting calls this).
        """
        if self.generator.conditional:
            return self._fit_conditional_class(split, positions, seed, where)
        generator = copy.deepcopy(self.generator).to(split.x_train.device)
        rows = self._rows(split, generator, positions)
        if len(rows) < generator.min_rows:
            raise VTSSError(
                f"{where}: {len(rows)} training row(s), but {generator.name} needs at least "
                f"{generator.min_rows}"
            )
        return generator.fit(rows, split.preprocessor.schema, seed=seed)

    def _fit_conditional_class(
        self, split: PreparedSplit, positions: np.ndarray, seed: int, where: str
    ) -> ClassView:
        """A conditional model of ``positions`` (one class) plus the other classes' rows."""
        y = split.y_train.cpu().numpy()
        classes = np.unique(y[positions])
        if len(classes) != 1:
            raise VTSSError(
                f"{where}: a conditional generator is fitted for one class at a time here, "
                f"but the rows hold {len(classes)} classes"
            )
        k = int(classes[0])
        others = np.flatnonzero(y != k)
        fit_rows = np.sort(np.concatenate([np.asarray(positions), others]))
        return self.fit_labelled_generator(split, fit_rows, seed, where).for_class(k)

    def sample(
        self,
        split: PreparedSplit,
        generator: SyntheticGenerator,
        m: int,
        seed: int,
        where: str = "",
    ) -> torch.Tensor:
        """``m`` rows from ``generator`` in one call, encoded like ``split`` and checked.

        The checks: ``m`` rows (``m = 0`` gives a ``(0, d)`` tensor), the split's
        width, finite values. One call's rows depend on ``m`` for most generators;
        :meth:`prepare` draws fixed-size chunks through this to keep pools nested.
        ``where`` (e.g. ``" for class 'pos'"``) is added to the generator's name in
        the error raised when the rows are unusable.
        """
        if m == 0:  # nothing to draw (and scikit-learn's encoders refuse 0-row frames)
            return split.x_train.new_zeros((0, split.x_train.shape[1]))
        try:
            rows = generator.sample(m, generator_seed=seed)
        except VTSSError as exc:
            raise VTSSError(f"{exc} (sampling{where})") from None
        who = f"{generator.name}{where}"
        rows = self._encode(split, rows, who)
        if rows.ndim == 0 or len(rows) != m:
            n = len(rows) if rows.ndim else 0
            raise VTSSError(f"{who} returned {n} rows when {m} were asked for")
        rows = rows.reshape(m, -1).to(split.x_train.device)
        mask = split.preprocessor.column_mask
        if mask is not None and rows.shape[1] == len(mask):  # categories absent in training
            rows = rows * mask.to(rows.device)
        width = split.x_train.shape[1]
        if rows.shape != (m, width):
            raise VTSSError(
                f"{who} returned rows of shape {tuple(rows.shape)}, expected ({m}, {width})"
            )
        if not torch.isfinite(rows).all():
            raise VTSSError(f"{who} returned non-finite values (NaN or ±inf)")
        return rows

    @staticmethod
    def _encode(split: PreparedSplit, rows: Rows, who: str) -> torch.Tensor:
        """Sampled rows as float32 tensor rows; a frame goes through the split's preprocessing."""
        if isinstance(rows, pd.DataFrame):
            missing = [c for c in split.preprocessor.columns if c not in rows.columns]
            if missing:
                raise VTSSError(f"{who} returned rows without column(s) {missing[:5]}")
            try:
                rows = split.preprocessor.transform(rows)
            except VTSSError as exc:
                raise VTSSError(f"{who} returned unusable rows: {exc}") from None
        return torch.as_tensor(rows, dtype=torch.float32)
