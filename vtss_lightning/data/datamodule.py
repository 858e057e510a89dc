"""The DataModule that mixes real rows with a prefix of a synthetic pool.

It wires the parts together and keeps the state of a run: labels are encoded by
:mod:`~vtss_lightning.data.labels`, rows split by :mod:`~vtss_lightning.data.split`,
encoded by :mod:`~vtss_lightning.data.preprocessing`, augmented by
:mod:`~vtss_lightning.data.pool` and served by :mod:`~vtss_lightning.data.loaders`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch

from vtss_lightning import _lightning
from vtss_lightning.data.features import Features, as_features, maybe_features
from vtss_lightning.data.generator_list import GeneratorChoice, as_generator_list, generator_labels
from vtss_lightning.data.labels import LabelCodec
from vtss_lightning.data.loaders import FeatureBatches, TensorBatches, eval_batches
from vtss_lightning.data.pool import (
    PoolBuilder,
    SyntheticPool,
    check_sizes,
    ratio_to_sizes,
)
from vtss_lightning.data.preprocessing import IdentityPreprocessor, Preprocessor
from vtss_lightning.data.row_layout import training_rows
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.data.split import (
    PreparedSplit,
    RowPreprocessor,
    holdout_indices,
    prepare_split,
    stratified_folds,
)
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators.base import SyntheticGenerator

#: Name of the split that trains on every development row (``use_all_rows``).
ALL_ROWS = "all development rows"


def trim_heap() -> None:
    """Hand the heap's freed pages back to the OS (glibc; elsewhere nothing).

    glibc keeps freed memory of many mid-sized blocks (a DataFrame's columns, parser
    buffers) resident for reuse; once the raw rows are let go the search allocates a
    pool and training sets of other sizes, which would then come on top of it.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reloads_exactly(load_data: Callable) -> Callable:
    """Mark a ``load_data`` that returns the same rows every call (a file, a built-in
    dataset, arrays held by the DataModule): its raw rows can then be let go once
    encoded and loaded again for a refit. A subclass's own ``load_data`` is not
    marked, so its rows are kept, as it may not return the same ones twice."""
    load_data.reloads_exactly = True
    return load_data


class SyntheticAugmentationDataModule(_lightning.dual_base("LightningDataModule")):
    """Real rows plus the first ``m_k`` synthetic rows of each minority class.

    Splits the development data (stratified), fits preprocessing and one generator per
    minority class on the training rows only, samples a :class:`SyntheticPool` in
    seeded chunks up to the largest size asked for (prefixes are nested whatever the
    size), and serves ERM batches over the union of real and synthetic rows.
    Validation and test loaders carry real rows only.

    Use it directly with in-memory tensors, or through :class:`TabularDataModule`
    (tables) and ``ImageDataModule`` (images), which only change how data is loaded and
    encoded.

    Parameters
    ----------
    x, y
        Development features and labels (any label type); split into train/val here.
    x_test, y_test
        Optional held-out test data, only ever evaluated.
    generator
        Template generator, copied once per minority class (a conditional one is fitted
        once per split on every class). ``None`` uses SMOTE. A list of generators makes
        the ``VTSSCallback`` compare (generator, size) pairs on the same folds and keep
        the best pair (one pool per generator); :attr:`generator` is then the one in
        use, the winner after the search.
    val_fraction
        Share of development rows held out for validation (stratified).
    batch_size
        Training batch size; models that set ``full_batch = True`` (L-BFGS) get the
        whole training set as one batch.
    synthetic_ratio
        Share of each class's gap filled with synthetic rows when no search sets a
        size (1.0 = full balance). The ``VTSSCallback`` overrides it.
    seed
        Seeds the split, generator fits, the pool draw and batch shuffling.
    """

    def __init__(
        self,
        x: Features | np.ndarray | None = None,
        y: np.ndarray | torch.Tensor | list | None = None,
        x_test: Features | np.ndarray | None = None,
        y_test: np.ndarray | torch.Tensor | list | None = None,
        generator: GeneratorChoice = None,
        val_fraction: float = 0.2,
        batch_size: int = 256,
        synthetic_ratio: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise VTSSError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        if batch_size < 1:
            raise VTSSError(f"batch_size must be >= 1, got {batch_size}")
        self.generators: tuple[SyntheticGenerator, ...] = as_generator_list(generator)
        self.generator_labels: list[str] = generator_labels(self.generators)
        self.generator: SyntheticGenerator = self.generators[0]
        self._generator_index = 0
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.seed = seed
        self._raw = (x, y, x_test, y_test)
        self._default_ratio = synthetic_ratio
        self._sizes: dict[int, int] | None = None
        self._device = torch.device("cpu")
        self._is_setup = False
        self.classes_: np.ndarray = np.array([])
        self._pool_builder: PoolBuilder | None = None
        self.notes: list[str] = []
        self.holdout: PreparedSplit | None = None
        self.active: PreparedSplit | None = None
        self.x_test: torch.Tensor | None = None
        self.y_test: torch.Tensor | None = None
        self._x_dev: Features | None = None
        self._x_test_raw: Features | None = None
        self._raw_released = False

    # ------------------------------------------------------------------ loading
    @reloads_exactly
    def load_data(self) -> tuple[Features, np.ndarray, Features | None, np.ndarray | None]:
        """Development features/labels and optional test features/labels."""
        x, y, x_test, y_test = self._raw
        if x is None or y is None:
            raise VTSSError("SyntheticAugmentationDataModule needs x and y")
        return (
            as_features(x),
            np.asarray(y),
            maybe_features(x_test),
            None if y_test is None else np.asarray(y_test),
        )

    def make_preprocessor(self, x_train: Features) -> Preprocessor:
        """Preprocessing fitted on training rows; override for tables or images."""
        return IdentityPreprocessor().fit(x_train)

    # -------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self._is_setup:
            return
        x, y, x_test, y_test = self.load_data()
        if len(y) == 0:
            raise VTSSError("the training data has no rows")
        if len(x) != len(y):
            raise VTSSError(f"features have {len(x)} rows but labels have {len(y)}")
        self._labels = LabelCodec(y)
        self.classes_ = self._labels.classes_
        self._x_dev, self._y_dev = x, self._labels.encode(y)
        self._x_test_raw = x_test if y_test is not None else None
        self._pool_builder = PoolBuilder(
            self.generator, self.raw_features, self.classes_, self.seed
        )
        train_idx, val_idx = holdout_indices(
            self._y_dev, self.classes_, self.val_fraction, self.seed
        )
        self.holdout = self._prepare_split("holdout", train_idx, val_idx)
        self.active = self.holdout
        if x_test is not None and y_test is not None:
            self.x_test = self.holdout.preprocessor.transform(x_test)
            self.y_test = torch.as_tensor(self._labels.encode(y_test, what="test"))
        del x, x_test
        self._is_setup = True
        self.release_raw()

    # ---------------------------------------------------------------- raw rows
    def raw_features(self) -> Features:
        """The raw development features, loaded again if :meth:`release_raw` let them go
        (they are then kept until the next release)."""
        if self._raw_released:
            self._reload_raw()
        assert self._x_dev is not None
        return self._x_dev

    def raw_test_features(self) -> Features | None:
        """The raw test features (``None``: no test data), loaded again like
        :meth:`raw_features`."""
        if self._raw_released:
            self._reload_raw()
        return self._x_test_raw

    def release_raw(self) -> bool:
        """Let the raw rows go once encoded: the splits hold float32 tensors, and a
        DataFrame of millions of rows costs several times them. Returns whether it did.

        Kept when a frame generator is fitted on raw rows, or when ``load_data`` is
        not marked :func:`reloads_exactly` (a subclass's own). A fold or the refit on
        every row (:meth:`use_split`, :meth:`use_all_rows`) loads them again; the
        hold-out search never needs them.
        """
        reloadable = getattr(type(self).load_data, "reloads_exactly", False)
        if not reloadable or any(g.input_kind == "frame" for g in self.generators):
            return False
        self._x_dev = self._x_test_raw = None
        self._raw_released = True
        self.forget_source()
        trim_heap()
        return True

    def forget_source(self) -> None:
        """Drop whatever ``load_data`` caches, so that :meth:`release_raw` frees the rows
        (nothing here; :class:`TabularDataModule` drops the tables it read)."""

    def _reload_raw(self) -> None:
        """Load the raw rows again; rows other than setup's are a ``VTSSError``."""
        x, y, x_test, y_test = self.load_data()
        y = np.asarray(y)
        if len(y) != len(self._y_dev) or not np.array_equal(self._labels.encode(y), self._y_dev):
            raise VTSSError(
                "the development data changed since setup(): loading it again for a refit "
                "gave other rows; keep the data unchanged while the DataModule is in use"
            )
        self._x_dev = x
        self._x_test_raw = x_test if y_test is not None else None
        self._raw_released = False

    def _prepare_split(
        self, name: str, train_idx: np.ndarray, val_idx: np.ndarray
    ) -> PreparedSplit:
        """Encode a split with preprocessing fitted on its own training rows only."""
        x, y, fit = self.raw_features(), self._y_dev, self.make_preprocessor
        return prepare_split(
            name, x, y, train_idx, val_idx, fit, self.num_classes, self._device, self.row_fitter()
        )

    def row_fitter(self) -> Callable[[Features, np.ndarray], RowPreprocessor] | None:
        """A fit of the preprocessing on rows of the raw features by position that
        encodes rows by position too, so that no copy of the raw training rows is made
        (:class:`TabularDataModule`'s); ``None``: :meth:`make_preprocessor` gets a copy."""
        return None

    def _require_setup(self) -> PreparedSplit:
        """The active split; a clear error instead of ``None`` before :meth:`setup`."""
        if self.active is None:
            raise VTSSError(
                "the DataModule is not set up yet; call setup() or pass it to trainer.fit"
            )
        return self.active

    # --------------------------------------------------------------- properties
    @property
    def num_classes(self) -> int:
        return len(self.classes_)

    @property
    def n_features(self) -> int:
        split = self._require_setup()
        return int(split.x_train.shape[1])

    @property
    def schema(self) -> FeatureSchema:
        return self._require_setup().preprocessor.schema

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.classes_]

    def class_gaps(self) -> dict[int, int]:
        """Gap per class on the active split's training rows (0 for the largest)."""
        return self._require_setup().gaps

    @property
    def pool_builder(self) -> PoolBuilder:
        """Fits the generators and samples them; built by :meth:`setup` (from ``generator``)."""
        self._require_setup()
        assert self._pool_builder is not None  # setup() builds it before any split
        return self._pool_builder

    def use_generator(self, which: int | str, drop_others: bool = False) -> SyntheticGenerator:
        """Draw pools from one of the listed generators (by position or report label).

        Each split keeps what it fitted and drew for every generator it has used, so
        switching back reuses those fits and rows; ``drop_others`` lets the others go
        (the search's final choice).
        """
        j = self._generator_position(which)
        if j != self._generator_index:
            for split in self._live_splits():
                split.switch_generator(self._generator_index, j)
            self._generator_index = j
            self.generator = self.generators[j]
            if self._pool_builder is not None:
                self._pool_builder.generator = self.generator
        if drop_others:
            for split in self._live_splits():
                split.stashed.clear()
        return self.generator

    def _generator_position(self, which: int | str) -> int:
        if isinstance(which, str):
            if which not in self.generator_labels:
                raise VTSSError(
                    f"no generator {which!r} is listed; the DataModule has "
                    f"{', '.join(self.generator_labels)}"
                )
            return self.generator_labels.index(which)
        if not 0 <= which < len(self.generators):
            raise VTSSError(f"generator index {which} outside 0..{len(self.generators) - 1}")
        return int(which)

    def _live_splits(self) -> list[PreparedSplit]:
        return list({id(s): s for s in (self.holdout, self.active) if s is not None}.values())

    # -------------------------------------------------------- folds & devices
    def fold_indices(
        self, folds: int, repeats: int = 1, seed: int | None = None
    ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """Stratified (repeated) K-fold over the development rows: ``(name, train, val)``."""
        self._require_setup()
        seed = self.seed if seed is None else seed
        yield from stratified_folds(self._y_dev, self.classes_, folds, repeats, seed)

    @contextmanager
    def use_split(
        self, name: str, train_idx: np.ndarray, val_idx: np.ndarray
    ) -> Iterator[PreparedSplit]:
        """Temporarily make a fold the active split (its own preprocessing and pool)."""
        previous = self._require_setup()
        self.active = self._prepare_split(name, train_idx, val_idx)
        try:
            yield self.active
        finally:
            self.active = previous

    def use_all_rows(self) -> PreparedSplit:
        """Train on every development row from now on (the refit after K-fold).

        Preprocessing and generators are fitted again on all development rows, the test
        features are encoded with that preprocessing, and the validation loader is
        empty (its rows are training rows now). The raw rows are then let go again
        (:meth:`release_raw`). Idempotent.
        """
        split = self._require_setup()
        if split.name == ALL_ROWS:
            return split
        every = np.arange(len(self._y_dev))
        self.active = self._prepare_split(ALL_ROWS, every, every[:0])
        x_test = self.raw_test_features()
        if x_test is not None:
            self.x_test = self.active.preprocessor.transform(x_test).to(self._device)
        del x_test
        self.release_raw()
        return self.active

    @property
    def trains_on_all_rows(self) -> bool:
        return self.active is not None and self.active.name == ALL_ROWS

    def to_device(self, device: torch.device | str) -> None:
        """Keep every tensor, generator and pool on ``device`` from now on."""
        self._device = torch.device(device)
        for split in self._live_splits():
            split.to(self._device)
        if self.x_test is not None:
            self.x_test, self.y_test = self.x_test.to(self._device), self.y_test.to(self._device)

    # ---------------------------------------------------------- pool & sizes
    def prepare_pool(self, sizes: Mapping[int, int]) -> SyntheticPool:
        """Fit the generators (once per split) and draw the pool at ``sizes``.

        The draw is reused while it covers the requested sizes; a larger request draws
        only the chunks it lacks. Either way the first ``m`` rows of a class do not
        depend on the largest size ever asked for. After a draw glibc's freed heap is
        handed back (:func:`trim_heap`): sampling's chunk-sized temporaries would stay
        resident under every candidate's training.
        """
        split = self._require_setup()
        before = split.pool
        pool = self.pool_builder.prepare(split, sizes)
        if pool is not before:
            trim_heap()
        return pool

    def sizes_for_ratio(self, ratio: float) -> dict[int, int]:
        return ratio_to_sizes(ratio, self.class_gaps())

    def set_synthetic_ratio(self, ratio: float) -> dict[int, int]:
        """Fill ``ratio`` of every class's gap with synthetic rows; returns the sizes."""
        sizes = self.sizes_for_ratio(ratio)
        self.set_synthetic_sizes(sizes)
        return sizes

    def set_synthetic_sizes(self, sizes: Mapping[int, int]) -> None:
        """Synthetic rows per class index for the next training loader."""
        self._require_setup()
        self._sizes = check_sizes(sizes, self.num_classes)

    @property
    def synthetic_sizes(self) -> dict[int, int]:
        """Current sizes (the default ratio's until a search or user sets them)."""
        if self._sizes is None:
            return self.sizes_for_ratio(self._default_ratio)
        return dict(self._sizes)

    # ---------------------------------------------------------------- loaders
    def training_tensors(
        self, sizes: Mapping[int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Real training rows followed by the pool prefix at ``sizes``.

        The features are a view of the split's buffer (real rows, then the pool) when
        the prefixes lie back to back there (one minority class, or every class but the
        last at its full pool), else one tensor filled once; like ``x_train`` at size 0,
        they share the split's rows and must not be written in place.
        """
        split = self._require_setup()
        sizes = self.synthetic_sizes if sizes is None else dict(sizes)
        if any(m > 0 for m in sizes.values()):
            blocks = self.prepare_pool(sizes).prefixes(sizes)  # may move x_train: read after
            return training_rows(blocks, head=(split.x_train, split.y_train))
        return split.x_train, split.y_train

    def make_train_loader(
        self, sizes: Mapping[int, int] | None = None, full_batch: bool = False
    ) -> TensorBatches:
        """Shuffled ERM batches over real + synthetic rows (plain, unweighted union)."""
        x, y = self.training_tensors(sizes)
        return TensorBatches(
            x, y, None if full_batch else self.batch_size, shuffle=True, seed=self.seed
        )

    def _follow_trainer_device(self) -> None:
        if self.trainer is not None and self.trainer.strategy.root_device != self._device:
            self.to_device(self.trainer.strategy.root_device)

    def train_dataloader(self) -> TensorBatches:
        self._follow_trainer_device()
        module = self.trainer.lightning_module if self.trainer is not None else None
        return self.make_train_loader(full_batch=bool(getattr(module, "full_batch", False)))

    def val_dataloader(self) -> TensorBatches:
        self._follow_trainer_device()
        split = self._require_setup()
        return eval_batches(split.x_val, split.y_val)

    def test_dataloader(self) -> TensorBatches:
        self._follow_trainer_device()
        if self.x_test is None:
            raise VTSSError("this DataModule has no test data; pass test data (e.g. test_path=)")
        return eval_batches(self.x_test, self.y_test)

    def predict_dataloader(self) -> FeatureBatches:
        """Features of the test rows (else the validation rows, or after
        :meth:`use_all_rows` the development rows)."""
        self._follow_trainer_device()
        split = self._require_setup()
        if self.x_test is not None:
            return FeatureBatches(self.x_test)
        return FeatureBatches(split.x_train if self.trains_on_all_rows else split.x_val)

    @property
    def has_test(self) -> bool:
        return self.x_test is not None
