"""Leakage-safe preprocessing: fitted on training rows, applied to every split.

Every preprocessing honours one contract, :class:`Preprocessor`: tensors and images
are flattened (:class:`IdentityPreprocessor`, :class:`ImagePreprocessor`), tables
imputed, scaled and one-hot encoded (:class:`TabularPreprocessor`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from vtss_lightning.data.columns import (
    as_text,
    category_pipeline,
    column,
    column_groups,
    numeric_block,
    numeric_values,
    raise_inf,
)
from vtss_lightning.data.features import FLOAT32_MAX, Features, check_float32, extreme
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError


class Preprocessor(Protocol):
    """What the DataModule, its splits and its pool builder use of a preprocessing.

    Fitted on one split's training rows (:meth:`fit`), then applied to every row that
    reaches a model or a tensor generator (:meth:`transform`): validation and test
    rows never inform it.

    Attributes
    ----------
    schema
        Layout of the encoded matrix, set by :meth:`fit`.
    columns
        Raw feature columns that :meth:`transform` reads (empty for tensors); a frame
        generator's samples must have every one of them.
    imputed_columns
        Raw columns with missing values in the training rows (filled by imputation).
    column_mask
        ``1`` per encoded column the training rows use and ``0`` for the others
        (categories absent from the split), or ``None`` when all are used.
    """

    schema: FeatureSchema | None
    columns: list[str]
    imputed_columns: list[str]

    @property
    def column_mask(self) -> torch.Tensor | None: ...

    def fit(self, x: Features) -> Preprocessor: ...

    def transform(self, x: Features) -> torch.Tensor: ...


class IdentityPreprocessor:
    """Flattens tensors to float32 rows; the preprocessing of already-numeric data."""

    def __init__(self) -> None:
        self.schema: FeatureSchema | None = None
        self.columns: list[str] = []
        self.imputed_columns: list[str] = []

    @property
    def column_mask(self) -> torch.Tensor | None:
        """Always ``None``: every column of numeric data is used."""
        return None

    def fit(self, x: Features) -> IdentityPreprocessor:
        self.schema = FeatureSchema.all_numeric(self.transform(x).shape[1])
        return self

    def transform(self, x: Features) -> torch.Tensor:
        if isinstance(x, pd.DataFrame):
            values = x.to_numpy(dtype=np.float64)
            check_float32(values, [str(c) for c in x.columns], "data")
            x = torch.as_tensor(values.astype(np.float32))
        elif x.dtype == torch.float64:
            check_float32(x.reshape(len(x), -1).numpy(), None, "data")
        x = x.reshape(len(x), -1).to(torch.float32)
        if not torch.isfinite(x).all():
            raise VTSSError(
                "features contain NaN or ±inf values; clean them or use TabularDataModule"
            )
        return x


class ImagePreprocessor(IdentityPreprocessor):
    """Flattens ``(N, C, H, W)`` images in ``[0, 1]`` to rows; the schema keeps the shape.

    Pixels are not standardised: generators and the sample grid work in pixel space,
    and the classifier normalises internally (batch norm).
    """

    def __init__(self) -> None:
        super().__init__()
        self.image_shape: tuple[int, int, int] | None = None

    def fit(self, x: torch.Tensor) -> ImagePreprocessor:
        if x.ndim != 4:
            raise VTSSError(f"images must have shape (N, C, H, W), got {tuple(x.shape)}")
        self.image_shape = tuple(int(s) for s in x.shape[1:])
        self.schema = FeatureSchema.image(*self.image_shape)
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_shape is not None:
            c, h, w = self.image_shape
            ok = tuple(x.shape[1:]) == self.image_shape if x.ndim == 4 else None
            if x.ndim == 2:
                ok = x.shape[1] == c * h * w
            if not ok:
                raise VTSSError(
                    f"images of shape {tuple(x.shape[1:])} do not match the training images "
                    f"{self.image_shape}; resize them to the same shape"
                )
        return super().transform(x)


#: Row positions to read in a frame (``None``: every row).
Rows = np.ndarray | None

#: Rows encoded at a time: a transform's float64 temporaries are this many rows whatever
#: the table's length; what it keeps is the one float32 matrix it fills.
ENCODE_CHUNK_ROWS = 1 << 16


def row_chunks(frame: pd.DataFrame, rows: Rows = None) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(offset, block)``: ``frame``'s rows (those at ``rows``) in blocks of
    :data:`ENCODE_CHUNK_ROWS`, ``offset`` counting the rows before the block."""
    n = len(frame) if rows is None else len(rows)
    for start in range(0, n, ENCODE_CHUNK_ROWS):
        block = slice(start, start + ENCODE_CHUNK_ROWS)
        yield start, frame.iloc[block] if rows is None else frame.iloc[rows[block]]


def overflows(encoded: np.ndarray) -> np.ndarray:
    """Where encoded values are not finite or beyond float32 (an overflow: inputs are
    finite and missing values imputed)."""
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(encoded) | (np.abs(encoded) > FLOAT32_MAX)


class TabularPreprocessor:
    """Impute, scale numeric columns and one-hot encode categorical ones.

    Fitted on the training split only, so validation and test rows never inform the
    medians, scales or category lists. Unknown categories at transform time encode as
    all-zero blocks instead of failing.

    Statistics are fitted on blocks of columns of at most
    :data:`~vtss_lightning.data.columns.FIT_BLOCK_VALUES`
    values (scikit-learn's median imputer and standard scaler; a small table's numeric
    columns in one block) and rows are encoded in blocks of :data:`ENCODE_CHUNK_ROWS`
    straight into one float32 matrix, so no float64 copy of the whole table is ever
    made: a table of millions of rows costs its encoded size, not several times it.

    Parameters
    ----------
    categorical
        Columns to one-hot encode; every other column must be numeric.
    scale
        Standardise numeric columns (mean 0, sd 1 on the training rows). Off keeps the
        raw units, which the paper's simulations use.
    layout
        Category names per categorical column (:func:`category_layout` of all
        development rows), so that every split (hold-out, each fold) encodes to the
        same width and one model fits them all. A category missing from the training
        rows is encoded as zeros, exactly as an unseen one, and left out of the
        schema's one-hot groups: no encoded value depends on rows outside training.
    max_categories
        Most one-hot columns per categorical column: beyond it the column keeps its
        ``max_categories - 1`` most frequent levels in the training rows and the
        others (and unknown ones) share one ``infrequent`` column. ``None``: no cap.
    drop
        Raw columns not to encode (e.g. ID-like ones, see
        :func:`~vtss_lightning.data.columns.id_like_columns`).

    Numeric values must fit float32 once encoded: a finite value that overflows it,
    or overflows the scaler's statistics, is a ``VTSSError`` naming the column and the
    rows (``transform(..., what="test data")``), not a silent ``inf``.
    """

    def __init__(
        self,
        categorical: list[str],
        scale: bool = True,
        layout: list[list] | None = None,
        max_categories: int | None = None,
        drop: list[str] | None = None,
    ) -> None:
        self.drop = list(drop or [])
        self.categorical = [c for c in categorical if c not in self.drop]
        self.scale = scale
        self.layout = layout
        self.max_categories = max_categories
        #: Categorical columns whose levels were capped: ``{name: number of levels}``.
        self.capped_columns: dict[str, int] = {}
        self._mask: torch.Tensor | None = None
        self._numeric: list[str] = []
        self._median: np.ndarray | None = None  # per numeric column; None before fit
        self._mean: np.ndarray | None = None  # None without scaling
        self._scale: np.ndarray | None = None
        self._categories: Pipeline | None = None
        self._width = 0
        self.schema: FeatureSchema | None = None
        self.columns: list[str] = []
        self.imputed_columns: list[str] = []

    def fit(self, frame: pd.DataFrame, rows: Rows = None) -> TabularPreprocessor:
        """Fit on ``frame``, or on its rows at positions ``rows`` (read in place: no copy
        of the training rows is made)."""
        self.columns = [c for c in frame.columns if c not in self.drop]
        self._numeric = [c for c in self.columns if c not in self.categorical]
        self._check_no_inf(frame, rows)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is named below
            missing = self._fit_numeric(frame, rows)
            self._fit_categories(frame, rows)
        self.imputed_columns = [
            c
            for c in self.columns
            if (missing[c] if c in missing else bool(column(frame, c, rows).isna().any()))
        ]
        self._check_scaler(frame, rows)
        self._mask = None
        self.check_range(frame, "training data", rows)
        seen = self._seen_columns(frame, rows)
        if not bool(seen.all()):
            self._mask = seen.to(torch.float32)
        self.schema = self._build_schema(seen.tolist())
        return self

    def _numeric_blocks(
        self, frame: pd.DataFrame, rows: Rows, strict: bool = True
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(first column, block)``: the numeric columns of the rows at ``rows`` in
        :func:`column_groups`, each read as one float64 :func:`numeric_block`."""
        n = len(frame) if rows is None else len(rows)
        start = 0
        for cols in column_groups(self._numeric, n):
            yield start, numeric_block(frame, cols, rows, strict)
            start += len(cols)

    def _check_no_inf(self, frame: pd.DataFrame, rows: Rows) -> None:
        """Raise on ±inf in a numeric column (the first such column), read as numbers
        where it can be (a text column's non-numbers are named later)."""
        for start, block in self._numeric_blocks(frame, rows, strict=False):
            bad = np.isinf(block).any(axis=0)
            if bad.any():
                raise_inf(self._numeric[start + int(np.flatnonzero(bad)[0])])

    def _fit_numeric(self, frame: pd.DataFrame, rows: Rows) -> dict[str, bool]:
        """Median (and mean and scale) of each numeric column; whether each has missing
        values.

        The estimators are scikit-learn's, fitted on blocks of columns (each column's
        statistics are its own: a whole-table fit gives the same medians, and means and
        scales to float64 rounding).
        """
        d = len(self._numeric)
        medians, means, scales = np.zeros(d), np.zeros(d), np.ones(d)
        missing = np.zeros(d, dtype=bool)
        for start, block in self._numeric_blocks(frame, rows):
            cols = slice(start, start + block.shape[1])
            missing[cols] = np.isnan(block).any(axis=0)
            imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(block)
            medians[cols] = imputer.statistics_
            if self.scale:
                scaler = StandardScaler().fit(imputer.transform(block))
                means[cols], scales[cols] = scaler.mean_, scaler.scale_
        self._median = medians
        self._mean = means if self.scale else None
        self._scale = scales if self.scale else None
        return dict(zip(self._numeric, missing.tolist(), strict=True))

    def _fit_categories(self, frame: pd.DataFrame, rows: Rows) -> None:
        """Most-frequent imputation and one-hot encoding of the categorical columns."""
        self._categories = None
        width = 0
        if self.categorical:
            categories = "auto" if self.layout is None else self.layout
            pipeline = category_pipeline(categories, self.max_categories)
            self._categories = pipeline.fit(self._text(frame, rows))
            width = len(self._categories.get_feature_names_out())
        self._width = len(self._numeric) + width

    @property
    def column_mask(self) -> torch.Tensor | None:
        """1 for encoded columns the training rows use, 0 for absent categories (or None)."""
        return self._mask

    def transform(self, frame: pd.DataFrame, what: str = "data") -> torch.Tensor:
        """Encode ``frame`` into one float32 matrix; ``what`` names its rows in errors
        (``"test data"``)."""
        return self.transform_rows(frame, None, what)

    def transform_rows(self, frame: pd.DataFrame, rows: Rows, what: str = "data") -> torch.Tensor:
        """Encode ``frame``'s rows at positions ``rows`` (``None``: all), read in place."""
        if self._median is None:
            raise VTSSError("preprocessor used before fit()")
        n_num = len(self._numeric)
        n = len(frame) if rows is None else len(rows)
        out = torch.empty((n, self._width), dtype=torch.float32)
        matrix = out.numpy()
        inf, bad = np.zeros(n_num, dtype=bool), np.zeros(n_num, dtype=bool)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is named below
            for start, part in row_chunks(frame, rows):
                block = matrix[start : start + len(part)]
                numeric = self._encode_numeric(part, inf)
                bad |= overflows(numeric).any(axis=0)
                block[:, :n_num] = numeric
                if self._categories is not None:
                    block[:, n_num:] = self._categories.transform(self._text(part))
        self._raise_bad_values(frame, inf, bad, what, rows)
        if self._mask is not None:
            out *= self._mask
        return out

    def check_range(self, frame: pd.DataFrame, what: str, rows: Rows = None) -> None:
        """Raise, as :meth:`transform` would, when a numeric value of ``frame`` (of its
        rows at ``rows``) would overflow float32 once encoded (cheaper: the numeric
        columns only)."""
        if self._median is None or not self._numeric:
            return
        inf, bad = np.zeros(len(self._numeric), dtype=bool), np.zeros(len(self._numeric), bool)
        with np.errstate(over="ignore", invalid="ignore"):
            for _, part in row_chunks(frame, rows):
                bad |= overflows(self._encode_numeric(part, inf)).any(axis=0)
        self._raise_bad_values(frame, inf, bad, what, rows)

    def _encode_numeric(self, frame: pd.DataFrame, inf: np.ndarray) -> np.ndarray:
        """The numeric columns of ``frame`` imputed and scaled, float64 (a row block);
        ``inf`` is or-ed with the columns holding ±inf."""
        assert self._median is not None
        values = numeric_block(frame, self._numeric)
        inf |= np.isinf(values).any(axis=0)
        return self._encode_column(values, slice(None))

    def _raise_bad_values(
        self, frame: pd.DataFrame, inf: np.ndarray, bad: np.ndarray, what: str, rows: Rows
    ) -> None:
        """Raise for the first numeric column holding ±inf, else for the first whose
        encoded values overflow float32."""
        if inf.any():
            raise_inf(self._numeric[int(np.flatnonzero(inf)[0])])
        if bad.any():
            self._raise_overflow(frame, int(np.flatnonzero(bad)[0]), what, rows)

    def _encode_column(self, values: np.ndarray, j: int | slice) -> np.ndarray:
        """Numeric column ``j`` (or the columns of a block, ``j`` a slice), written in
        place (``values`` must be the caller's own array):
        missing values take the training median, then ``(x - mean) / scale`` as
        scikit-learn's scaler computes it."""
        assert self._median is not None
        np.copyto(values, self._median[j], where=np.isnan(values))
        if self._mean is not None and self._scale is not None:
            values -= self._mean[j]
            values /= self._scale[j]
        return values

    def _text(self, frame: pd.DataFrame, rows: Rows = None) -> pd.DataFrame:
        """The categorical columns as the encoder sees them (text, missing kept)."""
        return pd.DataFrame({c: as_text(column(frame, c, rows)) for c in self.categorical})

    def _seen_columns(self, frame: pd.DataFrame, rows: Rows) -> torch.Tensor:
        """Encoded columns the rows use: every numeric one, the categories they hold."""
        seen = np.ones(self._width, dtype=bool)
        if self._categories is not None:
            used = np.zeros(self._width - len(self._numeric), dtype=bool)
            for _, part in row_chunks(frame, rows):
                used |= (self._categories.transform(self._text(part)) != 0).any(axis=0)
            seen[len(self._numeric) :] = used
        return torch.as_tensor(seen)

    def _check_scaler(self, frame: pd.DataFrame, rows: Rows) -> None:
        """Raise when a column's training values overflow the scaler's mean or variance."""
        if self._mean is None or self._scale is None or not self._numeric:
            return
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(self._mean) & np.isfinite(self._scale)
        if ok.all():
            return
        name = self._numeric[int(np.flatnonzero(~ok)[0])]
        values = pd.to_numeric(column(frame, name, rows), errors="coerce")
        peak = extreme(values.to_numpy(np.float64))
        raise VTSSError(
            f"column {name!r} in the training data has a value of {peak:.3g}, too large to "
            "standardise (its mean or variance overflows); rescale it (e.g. other units or "
            "a log)"
        )

    def _raise_overflow(self, frame: pd.DataFrame, j: int, what: str, rows: Rows) -> None:
        """Raise for numeric column ``j`` of ``frame`` (its rows at ``rows``), whose
        encoded values overflow float32, naming the raw column and its most extreme
        offending value."""
        name = self._numeric[j]
        raw = pd.to_numeric(column(frame, name, rows), errors="coerce").to_numpy(np.float64)
        check_float32(raw[:, None], [name], what)  # the value itself is beyond float32
        with np.errstate(over="ignore", invalid="ignore"):
            encoded = self._encode_column(numeric_values(frame, name, rows).copy(), j)
        rows = overflows(encoded)
        peak = extreme(raw[rows])
        peak = extreme(encoded[rows]) if np.isnan(peak) else peak  # an imputed value
        scale = "" if self._scale is None else f" ({self._scale[j]:.3g})"
        raise VTSSError(
            f"column {name!r} in the {what} has a value of {peak:.3g}, beyond float32 "
            f"(±3.4e38) once standardised with the training rows' scale{scale}; rescale it "
            "(e.g. other units or a log)"
        )

    def _build_schema(self, seen: list[bool]) -> FeatureSchema:
        n_num = len(self._numeric)
        names = [str(c) for c in self._numeric]
        groups: list[tuple[int, ...]] = []
        self.capped_columns = {}
        if self._categories is not None:
            names += [str(n) for n in self._categories.get_feature_names_out()]
            encoder = self._categories.named_steps["onehot"]
            infrequent = getattr(encoder, "infrequent_categories_", None)
            infrequent = infrequent or [None] * len(encoder.categories_)
            start = n_num
            for col, cats, rare in zip(
                self.categorical, encoder.categories_, infrequent, strict=True
            ):
                width = len(cats) if rare is None else len(cats) - len(rare) + 1
                if rare is not None:
                    self.capped_columns[col] = len(cats)
                group = tuple(j for j in range(start, start + width) if seen[j])
                if group:
                    groups.append(group)
                start += width
        return FeatureSchema(
            n_features=len(names),
            numeric=tuple(range(n_num)),
            categorical_groups=tuple(groups),
            names=tuple(names),
        )
