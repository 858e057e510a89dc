"""Leakage-safe preprocessing: fitted on training rows, applied to every split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError

#: A text column whose values are at least this share numbers is a numeric column
#: with a few unparseable entries (``"?"``, ``"n/a"``, ``"1,5"``), not a category.
NUMERIC_SHARE = 0.8


def infer_categorical(frame: pd.DataFrame, categorical: list[str] | None = None) -> list[str]:
    """Columns treated as categorical: the given list, else every non-numeric column.

    A numeric column must hold numbers only: a listed ``categorical`` makes every
    other column numeric, and an unlisted text column that is mostly numbers is taken
    for a numeric column with typos. Either way an unparseable value is a
    ``VTSSError`` naming the column and the values, not a silent one-hot encoding.
    """
    if categorical is not None:
        missing = [c for c in categorical if c not in frame.columns]
        if missing:
            raise VTSSError(f"categorical column(s) {missing} not found in the data")
        for c in frame.columns:
            if c not in categorical:
                _check_numbers(frame[c], c, share=0.0)
        return list(categorical)
    out = []
    for c in frame.columns:
        col = frame[c]
        if pd.api.types.is_bool_dtype(col):
            out.append(c)
        elif not pd.api.types.is_numeric_dtype(col):
            _check_numbers(col, c, share=NUMERIC_SHARE)
            out.append(c)
    return out


def _check_numbers(col: pd.Series, name: str, share: float) -> None:
    """Raise when ``col`` is (at least ``share``) numbers but some values are not."""
    if pd.api.types.is_numeric_dtype(col):
        return
    present = col.dropna()
    if len(present) == 0:
        return
    parsed = pd.to_numeric(present.astype(str).str.strip(), errors="coerce")
    bad = present[parsed.isna()]
    if len(bad) and (share == 0.0 or 1 - len(bad) / len(present) >= share):
        examples = ", ".join(repr(v) for v in pd.unique(bad)[:3])
        raise VTSSError(
            f"numeric column {name!r} has {len(bad)} value(s) that are not numbers "
            f"(e.g. {examples}); fix or blank them, or list the column in categorical="
        )


def _category_pipeline(categories) -> Pipeline:
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent", keep_empty_features=True)),
            (
                "onehot",
                OneHotEncoder(categories=categories, handle_unknown="ignore", sparse_output=False),
            ),
        ]
    )


def category_layout(frame: pd.DataFrame, categorical: list[str]) -> list[list] | None:
    """Category names of each categorical column over ``frame`` (names only, no statistics)."""
    if not categorical:
        return None
    text = pd.DataFrame(
        {c: frame[c].map(lambda v: v if pd.isna(v) else str(v)).astype(object) for c in categorical}
    )
    encoder = _category_pipeline("auto").fit(text).named_steps["onehot"]
    return [list(cats) for cats in encoder.categories_]


def _check_no_inf(frame: pd.DataFrame, numeric: list[str]) -> None:
    for col in numeric:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        if np.isinf(values).any():
            raise VTSSError(f"column {col!r} contains ±inf values; replace them or drop the rows")


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
        _check_no_inf(frame, numeric)
        self.imputed_columns = [c for c in self.columns if frame[c].isna().any()]
        num_steps: list = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
        if self.scale:
            num_steps.append(("scale", StandardScaler()))
        categories = "auto" if self.layout is None else self.layout
        self._transformer = ColumnTransformer(
            [
                ("num", Pipeline(num_steps), numeric),
                ("cat", _category_pipeline(categories), self.categorical),
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
        _check_no_inf(frame, self._numeric)  # validation and test rows too
        out = self._transformer.transform(self._as_input(frame[self.columns]))
        out = torch.as_tensor(np.asarray(out, dtype=np.float32))
        return out if self._mask is None else out * self._mask

    def _as_input(self, frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        for col in self._numeric:
            if not pd.api.types.is_numeric_dtype(frame[col]):  # numbers read as text
                _check_numbers(frame[col], col, share=0.0)
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
