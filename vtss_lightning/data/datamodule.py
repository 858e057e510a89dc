"""The DataModule that mixes real rows with a prefix of a synthetic pool."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split
from sklearn.preprocessing import LabelEncoder

from vtss_lightning.data.loaders import TensorBatches
from vtss_lightning.data.pool import SyntheticPool
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.data.split import PreparedSplit
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators.base import SyntheticGenerator

Features = pd.DataFrame | torch.Tensor


def ratio_to_sizes(ratio: float, gaps: Mapping[int, int]) -> dict[int, int]:
    """Per-class synthetic sizes ``round(ratio * gap_k)`` (halves round up)."""
    if ratio < 0 or not np.isfinite(ratio):
        raise VTSSError(f"synthetic ratio must be a finite number >= 0, got {ratio}")
    return {k: int(np.floor(ratio * g + 0.5)) for k, g in gaps.items() if g > 0}


class IdentityPreprocessor:
    """Flattens tensors to float32 rows; the preprocessing of already-numeric data."""

    def __init__(self) -> None:
        self.schema: FeatureSchema | None = None
        self.imputed_columns: list[str] = []

    def fit(self, x: Features) -> IdentityPreprocessor:
        self.schema = FeatureSchema.all_numeric(self.transform(x).shape[1])
        return self

    def transform(self, x: Features) -> torch.Tensor:
        if isinstance(x, pd.DataFrame):
            x = torch.as_tensor(x.to_numpy(dtype=np.float32))
        x = x.reshape(len(x), -1).to(torch.float32)
        if not torch.isfinite(x).all():
            raise VTSSError(
                "features contain NaN or ±inf values; clean them or use TabularDataModule"
            )
        return x


class SyntheticAugmentationDataModule(pl.LightningDataModule):
    """Real rows plus the first ``m_k`` synthetic rows of each minority class.

    Splits the development data (stratified), fits preprocessing and one generator per
    minority class on the training rows only, samples a :class:`SyntheticPool` once
    at the largest size asked for, and serves ERM batches over the union of real and
    synthetic rows. Validation and test loaders carry real rows only.

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
        Template generator, copied once per minority class. ``None`` uses SMOTE.
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
        generator: SyntheticGenerator | None = None,
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
        if generator is None:
            from vtss_lightning.generators.smote import SMOTEGenerator

            generator = SMOTEGenerator()
        self.generator = generator
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.seed = seed
        self._raw = (x, y, x_test, y_test)
        self._default_ratio = synthetic_ratio
        self._sizes: dict[int, int] | None = None
        self._device = torch.device("cpu")
        self._is_setup = False
        self.classes_: np.ndarray = np.array([])
        self.notes: list[str] = []
        self.holdout: PreparedSplit | None = None
        self.active: PreparedSplit | None = None
        self.x_test: torch.Tensor | None = None
        self.y_test: torch.Tensor | None = None

    # ------------------------------------------------------------------ loading
    def load_data(self) -> tuple[Features, np.ndarray, Features | None, np.ndarray | None]:
        """Development features/labels and optional test features/labels."""
        x, y, x_test, y_test = self._raw
        if x is None or y is None:
            raise VTSSError("SyntheticAugmentationDataModule needs x and y")
        return (
            _as_features(x),
            np.asarray(y),
            _maybe(x_test),
            None if y_test is None else np.asarray(y_test),
        )

    def make_preprocessor(self, x_train: Features):
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
        if pd.isna(pd.Series(y)).any():
            raise VTSSError("the target has missing labels; drop those rows or fill them")
        self._encoder = LabelEncoder().fit(_label_keys(y))
        self.classes_ = self._encoder.classes_
        if len(self.classes_) < 2:
            raise VTSSError(
                f"the target has only one class ({self.classes_[0]!r}); need at least two"
            )
        self._x_dev, self._y_dev = x, self._encode_labels(y)
        counts = np.bincount(self._y_dev, minlength=self.num_classes)
        for k, n in enumerate(counts):
            if n < 2:
                raise VTSSError(
                    f"class {self.classes_[k]!r} has {n} row(s); each class needs at least 2 "
                    "(one for training, one for validation)"
                )
        n_val = int(np.ceil(self.val_fraction * len(y)))
        if min(n_val, len(y) - n_val) < self.num_classes:
            raise VTSSError(
                f"val_fraction={self.val_fraction} puts {n_val} of {len(y)} rows into validation, "
                f"but each of the {self.num_classes} classes needs a row on both sides; "
                "change val_fraction"
            )
        train_idx, val_idx = train_test_split(
            np.arange(len(self._y_dev)),
            test_size=self.val_fraction,
            stratify=self._y_dev,
            random_state=self.seed,
        )
        missing = set(range(self.num_classes)) - set(self._y_dev[val_idx].tolist())
        if missing:
            names = [self.classes_[k] for k in sorted(missing)]
            raise VTSSError(
                f"the validation split has no rows of class(es) {names}; raise val_fraction "
                "or use folds= on the VTSSCallback"
            )
        self.holdout = self._prepare_split("holdout", np.sort(train_idx), np.sort(val_idx))
        self.active = self.holdout
        if x_test is not None and y_test is not None:
            self.x_test = self.holdout.preprocessor.transform(x_test)
            self.y_test = torch.as_tensor(self._encode_labels(y_test, what="test"))
        self._is_setup = True

    def _encode_labels(self, y: np.ndarray, what: str = "training") -> np.ndarray:
        keys = _label_keys(y)
        unknown = sorted(set(keys) - set(self.classes_.tolist()))
        if unknown:
            raise VTSSError(
                f"the {what} labels contain classes never seen in training: {unknown[:5]}"
            )
        return self._encoder.transform(keys).astype(np.int64)

    def _prepare_split(
        self, name: str, train_idx: np.ndarray, val_idx: np.ndarray
    ) -> PreparedSplit:
        x_train_raw = _take(self._x_dev, train_idx)
        preprocessor = self.make_preprocessor(x_train_raw)
        return PreparedSplit(
            name=name,
            train_index=train_idx,
            val_index=val_idx,
            x_train=preprocessor.transform(x_train_raw).to(self._device),
            y_train=torch.as_tensor(self._y_dev[train_idx]).to(self._device),
            x_val=preprocessor.transform(_take(self._x_dev, val_idx)).to(self._device),
            y_val=torch.as_tensor(self._y_dev[val_idx]).to(self._device),
            preprocessor=preprocessor,
            num_classes=self.num_classes,
        )

    def _require_setup(self) -> PreparedSplit:
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

    # -------------------------------------------------------- folds & devices
    def fold_indices(self, folds: int, repeats: int = 1, seed: int | None = None):
        """Stratified (repeated) K-fold over the development rows: ``(name, train, val)``."""
        self._require_setup()
        counts = np.bincount(self._y_dev, minlength=self.num_classes)
        if folds < 2:
            raise VTSSError(f"folds must be >= 2, got {folds}")
        if counts.min() < folds:
            k = int(counts.argmin())
            raise VTSSError(
                f"class {self.classes_[k]!r} has {counts[k]} rows, fewer than folds={folds}; "
                "use fewer folds"
            )
        splitter = RepeatedStratifiedKFold(
            n_splits=folds, n_repeats=repeats, random_state=self.seed if seed is None else seed
        )
        for i, (tr, va) in enumerate(splitter.split(np.zeros(len(self._y_dev)), self._y_dev)):
            yield f"fold {i // folds + 1}.{i % folds + 1}", tr, va

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

    def to_device(self, device: torch.device | str) -> None:
        """Keep every tensor, generator and pool on ``device`` from now on."""
        self._device = torch.device(device)
        for split in {id(s): s for s in (self.holdout, self.active) if s is not None}.values():
            split.to(self._device)
        if self.x_test is not None:
            self.x_test, self.y_test = self.x_test.to(self._device), self.y_test.to(self._device)

    # ---------------------------------------------------------- pool & sizes
    def prepare_pool(self, sizes: Mapping[int, int]) -> SyntheticPool:
        """Fit the generators (once per split) and draw the pool at ``sizes``.

        The draw is reused while it covers the requested sizes; a larger request draws
        anew, so a search must prepare its largest candidate before any candidate.
        """
        split = self._require_setup()
        if split.pool.covers(sizes):
            return split.pool
        rows: dict[int, torch.Tensor] = {}
        for k, m in sorted(sizes.items()):
            if m <= 0:
                continue
            generator = split.generators.get(k) or self._fit_generator(split, k)
            split.generators[k] = generator
            rows[k] = self._sample(split, generator, k, m)
        split.pool = SyntheticPool(rows)
        return split.pool

    def _fit_generator(self, split: PreparedSplit, k: int) -> SyntheticGenerator:
        positions = torch.nonzero(split.y_train.cpu() == k).flatten().numpy()
        where = f"class {self.classes_[k]!r} after the split"
        return self.fit_generator(split, positions, self.seed * 1009 + k, where)

    def fit_generator(
        self, split: PreparedSplit, positions: np.ndarray, seed: int, where: str
    ) -> SyntheticGenerator:
        """A fresh copy of the template generator fitted on some of ``split``'s training rows.

        ``positions`` index ``split.x_train``; frame generators get the same rows raw.
        ``where`` names the rows in the error raised when there are too few of them.
        """
        generator = copy.deepcopy(self.generator).to(self._device)
        if generator.input_kind == "frame":
            rows = _as_frame(_take(self._x_dev, split.train_index[positions]))
        else:
            rows = split.x_train[torch.as_tensor(positions, device=split.x_train.device)]
        if len(rows) < generator.min_rows:
            raise VTSSError(
                f"{where}: {len(rows)} training row(s), but {generator.name} needs at least "
                f"{generator.min_rows}"
            )
        return generator.fit(rows, split.preprocessor.schema, seed=seed)

    def _sample(
        self, split: PreparedSplit, generator: SyntheticGenerator, k: int, m: int
    ) -> torch.Tensor:
        where = f" for class {self.classes_[k]!r}"
        return self.sample_encoded(split, generator, m, self.seed * 7919 + k, where)

    def sample_encoded(
        self,
        split: PreparedSplit,
        generator: SyntheticGenerator,
        m: int,
        seed: int,
        where: str = "",
    ) -> torch.Tensor:
        """``m`` rows from ``generator``, encoded like ``split`` and checked (shape, finite)."""
        who = f"{generator.name}{where}"
        try:
            rows = generator.sample(m, generator_seed=seed)
        except VTSSError as exc:
            raise VTSSError(f"{exc} (sampling{where})") from None
        if isinstance(rows, pd.DataFrame):
            columns = getattr(split.preprocessor, "columns", [])
            missing = [c for c in columns if c not in rows.columns]
            if missing:
                raise VTSSError(f"{who} returned rows without column(s) {missing[:5]}")
            try:
                rows = split.preprocessor.transform(rows)
            except VTSSError as exc:
                raise VTSSError(f"{who} returned unusable rows: {exc}") from None
        rows = torch.as_tensor(rows, dtype=torch.float32)
        if rows.ndim == 0 or len(rows) != m:
            n = len(rows) if rows.ndim else 0
            raise VTSSError(f"{who} returned {n} rows when {m} were asked for")
        rows = rows.reshape(m, -1).to(self._device)
        mask = getattr(split.preprocessor, "column_mask", None)
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
        clean: dict[int, int] = {}
        for k, m in sizes.items():
            if not 0 <= int(k) < self.num_classes:
                raise VTSSError(f"class index {k} out of range for {self.num_classes} classes")
            if int(m) < 0:
                raise VTSSError(f"synthetic size for class {k} must be >= 0, got {m}")
            clean[int(k)] = int(m)
        self._sizes = clean

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
        """Real training rows followed by the pool prefix at ``sizes``."""
        split = self._require_setup()
        sizes = self.synthetic_sizes if sizes is None else dict(sizes)
        if any(m > 0 for m in sizes.values()):
            synth_x, synth_y = self.prepare_pool(sizes).take(sizes)
            return torch.cat([split.x_train, synth_x]), torch.cat([split.y_train, synth_y])
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
        return TensorBatches(split.x_val, split.y_val, batch_size=8192, shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        self._follow_trainer_device()
        if self.x_test is None:
            raise VTSSError("this DataModule has no test data; pass test data (e.g. test_path=)")
        return TensorBatches(self.x_test, self.y_test, batch_size=8192, shuffle=False)

    @property
    def has_test(self) -> bool:
        return self.x_test is not None


def _label_keys(y: np.ndarray) -> np.ndarray:
    """Labels as a sortable array; mixed types compare as strings."""
    y = np.asarray(y)
    if y.dtype.kind in "biuf":
        return y
    return np.asarray([str(v) for v in y], dtype=object)


def _as_features(x) -> Features:
    if isinstance(x, pd.DataFrame):
        return x.reset_index(drop=True)
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def _maybe(x):
    return None if x is None else _as_features(x)


def _take(x: Features, idx: np.ndarray) -> Features:
    if isinstance(x, pd.DataFrame):
        return x.iloc[idx].reset_index(drop=True)
    return x[torch.as_tensor(idx, dtype=torch.long)]


def _as_frame(x: Features) -> pd.DataFrame:
    if isinstance(x, pd.DataFrame):
        return x
    flat = x.reshape(len(x), -1).numpy()
    return pd.DataFrame(flat, columns=[f"x{i}" for i in range(flat.shape[1])])
