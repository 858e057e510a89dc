"""Leakage-safe preprocessing: fitted on training rows, applied to every split.

Every preprocessing honours one contract, :class:`Preprocessor`: tensors and images
are flattened (:class:`IdentityPreprocessor`, :class:`ImagePreprocessor`), tables
imputed, scaled and one-hot encoded (:class:`TabularPreprocessor`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from vtss_lightning.data.columns import as_text, category_pipeline, check_no_inf, check_numbers
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


class TabularPreprocessor:
    """Impute, scale numeric columns and one-hot encode categorical ones.

    Fitted on the training split only, so validation and test rows never inform the
    medians, scales or category lists. Unknown categories at transform time encode as
    all-zero blocks instead of failing.

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
        self._transformer: ColumnTransformer | None = None
        self.schema: FeatureSchema | None = None
        self.columns: list[str] = []
        self.imputed_columns: list[str] = []

    def fit(self, frame: pd.DataFrame) -> TabularPreprocessor:
        self.columns = [c for c in frame.columns if c not in self.drop]
        numeric = [c for c in self.columns if c not in self.categorical]
        self._numeric = numeric
        check_no_inf(frame, numeric)
        self.imputed_columns = [c for c in self.columns if frame[c].isna().any()]
        num_steps: list = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
        if self.scale:
            num_steps.append(("scale", StandardScaler()))
        categories = "auto" if self.layout is None else self.layout
        self._transformer = ColumnTransformer(
            [
                ("num", Pipeline(num_steps), numeric),
                ("cat", category_pipeline(categories, self.max_categories), self.categorical),
            ],
            remainder="drop",
            verbose_feature_names_out=False,
        )
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is named below
            self._transformer.fit(self._as_input(frame))
        self._check_scaler(frame)
        self._mask = None
        seen = self.transform(frame, what="training data").ne(0).any(dim=0)
        seen[: len(numeric)] = True
        if not bool(seen.all()):
            self._mask = seen.to(torch.float32)
        self.schema = self._build_schema(numeric, seen.tolist())
        return self

    @property
    def column_mask(self) -> torch.Tensor | None:
        """1 for encoded columns the training rows use, 0 for absent categories (or None)."""
        return self._mask

    def transform(self, frame: pd.DataFrame, what: str = "data") -> torch.Tensor:
        """Encode ``frame``; ``what`` names its rows in errors (``"test data"``)."""
        if self._transformer is None:
            raise VTSSError("preprocessor used before fit()")
        check_no_inf(frame, self._numeric)  # validation and test rows too
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is named below
            out = np.asarray(
                self._transformer.transform(self._as_input(frame[self.columns])), np.float64
            )
        self._check_encoded(out[:, : len(self._numeric)], frame, what)
        out = torch.as_tensor(out.astype(np.float32))
        return out if self._mask is None else out * self._mask

    def check_range(self, frame: pd.DataFrame, what: str) -> None:
        """Raise, as :meth:`transform` would, when a numeric value of ``frame`` would
        overflow float32 once encoded (cheaper: the numeric columns only)."""
        if self._transformer is None or not self._numeric:
            return
        check_no_inf(frame, self._numeric)
        numeric = self._as_input(frame[self._numeric], categorical=False)
        with np.errstate(over="ignore", invalid="ignore"):
            out = self._transformer.named_transformers_["num"].transform(numeric)
        self._check_encoded(np.asarray(out, np.float64), frame, what)

    def _check_scaler(self, frame: pd.DataFrame) -> None:
        """Raise when a column's training values overflow the scaler's mean or variance."""
        if not self.scale or not self._numeric:
            return
        assert self._transformer is not None
        scaler = self._transformer.named_transformers_["num"].named_steps["scale"]
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(scaler.mean_) & np.isfinite(scaler.scale_)
        if ok.all():
            return
        name = self._numeric[int(np.flatnonzero(~ok)[0])]
        peak = extreme(pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64))
        raise VTSSError(
            f"column {name!r} in the training data has a value of {peak:.3g}, too large to "
            "standardise (its mean or variance overflows); rescale it (e.g. other units or "
            "a log)"
        )

    def _check_encoded(self, encoded: np.ndarray, frame: pd.DataFrame, what: str) -> None:
        """Raise on encoded numeric values beyond float32, naming the raw column.

        Inputs are finite (``check_no_inf``) and missing values imputed, so a
        non-finite encoded value can only be an overflow too.
        """
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(encoded) | (np.abs(encoded) > FLOAT32_MAX)
        if not bad.any():
            return
        j = int(np.flatnonzero(bad.any(axis=0))[0])
        name = self._numeric[j]
        raw = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64)
        check_float32(raw[:, None], [name], what)  # the value itself is beyond float32
        rows = bad[:, j]
        peak = extreme(raw[rows])
        peak = extreme(encoded[rows, j]) if np.isnan(peak) else peak  # an imputed value
        scaler = self._transformer.named_transformers_["num"].named_steps.get("scale")
        scale = "" if scaler is None else f" ({scaler.scale_[j]:.3g})"
        raise VTSSError(
            f"column {name!r} in the {what} has a value of {peak:.3g}, beyond float32 "
            f"(±3.4e38) once standardised with the training rows' scale{scale}; rescale it "
            "(e.g. other units or a log)"
        )

    def _as_input(self, frame: pd.DataFrame, categorical: bool = True) -> pd.DataFrame:
        frame = frame.copy()
        for col in self._numeric:
            if not pd.api.types.is_numeric_dtype(frame[col]):  # numbers read as text
                check_numbers(frame[col], col, share=0.0)
                frame[col] = pd.to_numeric(frame[col], errors="coerce")
        for col in self.categorical if categorical else ():
            frame[col] = as_text(frame[col])
        return frame

    def _build_schema(self, numeric: list[str], seen: list[bool]) -> FeatureSchema:
        assert self._transformer is not None
        names = tuple(str(n) for n in self._transformer.get_feature_names_out())
        n_num = len(numeric)
        groups: list[tuple[int, ...]] = []
        start = n_num
        if self.categorical:
            encoder = self._transformer.named_transformers_["cat"].named_steps["onehot"]
            infrequent = getattr(encoder, "infrequent_categories_", None)
            infrequent = infrequent or [None] * len(encoder.categories_)
            self.capped_columns = {}
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
            names=names,
        )
