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

from vtss_lightning.data.columns import category_pipeline, check_no_inf, check_numbers
from vtss_lightning.data.features import Features
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
            x = torch.as_tensor(x.to_numpy(dtype=np.float32))
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
    """

    def __init__(
        self, categorical: list[str], scale: bool = True, layout: list[list] | None = None
    ) -> None:
        self.categorical = list(categorical)
        self.scale = scale
        self.layout = layout
        self._mask: torch.Tensor | None = None
        self._transformer: ColumnTransformer | None = None
        self.schema: FeatureSchema | None = None
        self.columns: list[str] = []
        self.imputed_columns: list[str] = []

    def fit(self, frame: pd.DataFrame) -> TabularPreprocessor:
        self.columns = list(frame.columns)
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
                ("cat", category_pipeline(categories), self.categorical),
            ],
            remainder="drop",
            verbose_feature_names_out=False,
        )
        self._transformer.fit(self._as_input(frame))
        self._mask = None
        seen = self.transform(frame).ne(0).any(dim=0)
        seen[: len(numeric)] = True
        if not bool(seen.all()):
            self._mask = seen.to(torch.float32)
        self.schema = self._build_schema(numeric, seen.tolist())
        return self

    @property
    def column_mask(self) -> torch.Tensor | None:
        """1 for encoded columns the training rows use, 0 for absent categories (or None)."""
        return self._mask

    def transform(self, frame: pd.DataFrame) -> torch.Tensor:
        if self._transformer is None:
            raise VTSSError("preprocessor used before fit()")
        check_no_inf(frame, self._numeric)  # validation and test rows too
        out = self._transformer.transform(self._as_input(frame[self.columns]))
        out = torch.as_tensor(np.asarray(out, dtype=np.float32))
        return out if self._mask is None else out * self._mask

    def _as_input(self, frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        for col in self._numeric:
            if not pd.api.types.is_numeric_dtype(frame[col]):  # numbers read as text
                check_numbers(frame[col], col, share=0.0)
                frame[col] = pd.to_numeric(frame[col], errors="coerce")
        for col in self.categorical:
            frame[col] = frame[col].map(lambda v: v if pd.isna(v) else str(v)).astype(object)
        return frame

    def _build_schema(self, numeric: list[str], seen: list[bool]) -> FeatureSchema:
        assert self._transformer is not None
        names = tuple(str(n) for n in self._transformer.get_feature_names_out())
        n_num = len(numeric)
        groups: list[tuple[int, ...]] = []
        start = n_num
        if self.categorical:
            encoder = self._transformer.named_transformers_["cat"].named_steps["onehot"]
            for cats in encoder.categories_:
                group = tuple(j for j in range(start, start + len(cats)) if seen[j])
                if group:
                    groups.append(group)
                start += len(cats)
        return FeatureSchema(
            n_features=len(names),
            numeric=tuple(range(n_num)),
            categorical_groups=tuple(groups),
            names=names,
        )
