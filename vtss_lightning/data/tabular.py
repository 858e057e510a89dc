"""Tables in, encoded tensors out: CSV, Parquet, DataFrames, arrays, built-ins."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from vtss_lightning.data.columns import category_layout, id_like_columns, infer_categorical
from vtss_lightning.data.datamodule import SyntheticAugmentationDataModule, reloads_exactly
from vtss_lightning.data.features import fresh_index
from vtss_lightning.data.generator_list import GeneratorChoice
from vtss_lightning.data.preprocessing import TabularPreprocessor
from vtss_lightning.data.sources import check_table_path, read_table, split_target
from vtss_lightning.errors import VTSSError

_IN_MEMORY = "<in-memory frame>"


class TabularDataModule(SyntheticAugmentationDataModule):
    """VTSS data from a table: a file, a built-in dataset, or (via the class methods)
    a DataFrame or arrays.

    Missing values are imputed and numeric columns scaled with statistics of the
    training rows only; non-numeric (or listed ``categorical``) columns are one-hot
    encoded. Tensor generators work in that encoded space; SDV generators see the raw
    columns of their class and their samples are encoded the same way. A numeric
    value that would overflow float32 once encoded is a ``VTSSError`` naming the
    column and the file (training or test data).

    Parameters
    ----------
    path
        CSV or Parquet file with features and the target column.
    target
        Name of the label column (any label type). Built-in datasets set it.
    test_path
        Optional file with the same columns, used only for the final test metrics.
    dataset
        Built-in dataset instead of a file: ``breast_cancer``, ``digits_ovr``,
        ``wine_ovr``, ``paper_linear`` or ``paper_nonlinear`` (no download; see
        :mod:`vtss_lightning.data.builtin`).
    categorical
        Columns to treat as categorical; default: every non-numeric column.
    scale
        Standardise numeric columns on the training rows.
    max_categories
        Most one-hot columns a categorical column may take (default 50). A column
        with more levels keeps its ``max_categories - 1`` most frequent levels in the
        training rows, the rest sharing one ``infrequent`` column; a column with more
        levels than that, more than half of its rows distinct (an ID: a customer
        number, a timestamp as text), is dropped. Both are reported in the DataModule's
        ``notes`` (and the report's ``diagnostics.notes``). ``None``: one column per
        level, every column kept.
    generator, val_fraction, batch_size, synthetic_ratio, seed
        See :class:`SyntheticAugmentationDataModule`.
    """

    def __init__(
        self,
        path: str | None = None,
        target: str | None = None,
        test_path: str | None = None,
        dataset: str | None = None,
        categorical: list[str] | None = None,
        scale: bool = True,
        max_categories: int | None = 50,
        generator: GeneratorChoice = None,
        val_fraction: float = 0.2,
        batch_size: int = 256,
        synthetic_ratio: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            generator=generator,
            val_fraction=val_fraction,
            batch_size=batch_size,
            synthetic_ratio=synthetic_ratio,
            seed=seed,
        )
        if (path is None) == (dataset is None):
            raise VTSSError(
                "give exactly one of path= (a CSV/Parquet file) or dataset= (a built-in name)"
            )
        if path is not None:
            check_table_path(path, "path")
            if target is None:
                raise VTSSError("target= is required with path=: name the label column")
        if test_path is not None:
            check_table_path(test_path, "test_path")
        if dataset is not None:
            from vtss_lightning.data.builtin import BUILTIN_DATASETS

            if dataset not in (*BUILTIN_DATASETS, _IN_MEMORY):
                raise VTSSError(
                    f"unknown dataset {dataset!r}; built-in datasets are {', '.join(BUILTIN_DATASETS)}"
                )
        self.path, self.target, self.test_path, self.dataset = path, target, test_path, dataset
        if max_categories is not None and (
            isinstance(max_categories, bool)
            or not isinstance(max_categories, int)
            or max_categories < 2
        ):
            raise VTSSError(
                f"max_categories must be an integer >= 2 or None, got {max_categories!r}"
            )
        self.categorical = categorical
        self.scale = scale
        self.max_categories = max_categories
        self._frames: tuple[pd.DataFrame, pd.DataFrame | None] | None = None
        self._id_columns: dict[str, tuple[int, int]] | None = None

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, target: str, test_frame: pd.DataFrame | None = None, **kwargs
    ) -> TabularDataModule:
        """Build from in-memory DataFrames (features and target in one frame)."""
        if not isinstance(frame, pd.DataFrame):
            raise VTSSError(f"from_frame needs a pandas DataFrame, got {type(frame).__name__}")
        dm = cls(dataset=_IN_MEMORY, target=target, **kwargs)
        dm.dataset = None
        dm._frames = (frame, test_frame)
        return dm

    @classmethod
    def from_arrays(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        x_test: np.ndarray | None = None,
        y_test: np.ndarray | None = None,
        **kwargs,
    ) -> TabularDataModule:
        """Build from feature matrices and label vectors."""

        def frame(xa, ya):
            xa = np.asarray(xa)
            if xa.ndim != 2:
                raise VTSSError(f"x must be a 2-D array (rows, features), got shape {xa.shape}")
            f = pd.DataFrame(xa, columns=[f"x{i + 1}" for i in range(xa.shape[1])])
            f["target"] = np.asarray(ya)
            return f

        test = None if x_test is None else frame(x_test, y_test)
        return cls.from_frame(frame(x, y), target="target", test_frame=test, **kwargs)

    @reloads_exactly
    def load_data(self):
        train, test = self._load_frames()
        x, y = split_target(train, self.target, "training data")
        if test is None:
            return x, y.to_numpy(), None, None
        x_test, y_test = split_target(test, self.target, "test data")
        missing = [c for c in x.columns if c not in x_test.columns]
        if missing:
            raise VTSSError(f"the test data lacks feature column(s) {missing[:5]}")
        if list(x_test.columns) != list(x.columns):  # same order as training (a copy)
            x_test = fresh_index(x_test[list(x.columns)])
        return x, y.to_numpy(), x_test, y_test.to_numpy()

    def forget_source(self) -> None:
        """Drop the tables read from a file or built in (read again for a refit); frames
        given to :meth:`from_frame` are the caller's and stay."""
        if self.path is not None or self.dataset is not None:
            self._frames = None

    def _load_frames(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        if self._frames is None:
            if self.dataset is not None:
                from vtss_lightning.data.builtin import load_builtin

                data = load_builtin(self.dataset, seed=self.seed)
                self.target = data.target
                self._frames = (data.train, data.test)
            else:
                test = read_table(self.test_path, "test_path") if self.test_path else None
                self._frames = (read_table(self.path, "path"), test)
        return self._frames

    def make_preprocessor(self, x_train: pd.DataFrame) -> TabularPreprocessor:
        """Preprocessing fitted on ``x_train``; every split encodes to the same width.

        Which columns are IDs and the category names are decided once on all
        development rows (structure only: a dropped column encodes to nothing and a
        category's name to a column); every statistic (medians, scales, which levels
        are frequent) comes from ``x_train``. The development and test rows are then
        checked to fit float32 once encoded, so an overflow names its file.
        """
        return self._fit_preprocessor(x_train, None)

    def row_fitter(self) -> Callable[[pd.DataFrame, np.ndarray], TabularPreprocessor] | None:
        """:meth:`make_preprocessor` on the development rows at given positions, read in
        place (a subclass's own ``make_preprocessor`` gets a copy of the rows instead)."""
        if type(self).make_preprocessor is not TabularDataModule.make_preprocessor:
            return None
        return self._fit_preprocessor

    def _fit_preprocessor(self, x: pd.DataFrame, rows: np.ndarray | None) -> TabularPreprocessor:
        """:meth:`make_preprocessor` of ``x``'s rows at ``rows`` (``None``: all of ``x``)."""
        x_dev = self.raw_features()
        categorical = infer_categorical(x, self.categorical, rows)
        if self._id_columns is None:  # the same columns in every split
            self._id_columns = id_like_columns(x_dev, categorical, self.max_categories)
        categorical = [c for c in categorical if c not in self._id_columns]
        layout = category_layout(x_dev, categorical)  # same width in every split
        pre = TabularPreprocessor(
            categorical,
            scale=self.scale,
            layout=layout,
            max_categories=self.max_categories,
            drop=list(self._id_columns),
        ).fit(x, rows)
        pre.check_range(x_dev, "training data")  # the validation rows too
        x_test = self.raw_test_features()
        if x_test is not None:
            pre.check_range(x_test, "test data")
        return pre

    def setup(self, stage: str | None = None) -> None:
        if self._is_setup:
            return
        super().setup(stage)
        pre = self.holdout.preprocessor
        for name, (levels, rows) in (self._id_columns or {}).items():
            self.notes.append(
                f"column {name!r} dropped: {levels:,} distinct values in {rows:,} rows look "
                "like an ID (one-hot encoding would add a column per value); "
                "pass max_categories=None to keep it"
            )
        for name, levels in pre.capped_columns.items():
            self.notes.append(
                f"column {name!r} has {levels:,} levels: its {self.max_categories - 1} most "
                "frequent in the training rows are kept and the rest share one 'infrequent' "
                "column (raise max_categories= to keep more)"
            )
        imputed = pre.imputed_columns
        if imputed:
            self.notes.append(
                f"missing values imputed from training rows in column(s): {', '.join(map(str, imputed))}"
            )
