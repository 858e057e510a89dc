"""Which raw columns are numeric and which categorical, and their category names.

Decided on the development rows before any split is encoded, so that a typo in a
numeric column is a clear error instead of a silent one-hot column, and every split
encodes each categorical column to the same width.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

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
                check_numbers(frame[c], c, share=0.0)
        return list(categorical)
    out = []
    for c in frame.columns:
        col = frame[c]
        if pd.api.types.is_bool_dtype(col):
            out.append(c)
        elif not pd.api.types.is_numeric_dtype(col):
            check_numbers(col, c, share=NUMERIC_SHARE)
            out.append(c)
    return out


def check_numbers(col: pd.Series, name: str, share: float) -> None:
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


def category_pipeline(categories) -> Pipeline:
    """Most-frequent imputation then one-hot (unknown categories encode as zeros)."""
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
    encoder = category_pipeline("auto").fit(text).named_steps["onehot"]
    return [list(cats) for cats in encoder.categories_]


def check_no_inf(frame: pd.DataFrame, numeric: list[str]) -> None:
    """Raise on ±inf in a numeric column: imputation fills NaN only, scaling would give NaN."""
    for col in numeric:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        if np.isinf(values).any():
            raise VTSSError(f"column {col!r} contains ±inf values; replace them or drop the rows")
