"""Which raw columns are numeric and which categorical, and their category names.

Decided on the development rows before any split is encoded, so that a typo in a
numeric column is a clear error instead of a silent one-hot column, and every split
encodes each categorical column to the same width. A categorical column whose
values are nearly all distinct (an ID) would add a one-hot column per row, so it is
dropped (:func:`id_like_columns`); one with many levels keeps its most frequent
ones in the training rows and pools the rest (``max_categories``). Numeric columns
are read as float64 blocks of columns (:func:`numeric_block`), a text column of
numbers parsed, for the preprocessing's statistics and encoding.
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
#: A categorical column with more than ``max_categories`` levels, that many levels
#: being more than this share of its non-missing rows, is an ID: it is dropped.
ID_SHARE = 0.5
#: Values (rows x columns) of one float64 block of training columns when statistics are
#: fitted: a small table's numeric columns are read and fitted at once (one estimator
#: call, not one per column), a long one's a few columns at a time (32 MiB).
FIT_BLOCK_VALUES = 1 << 22


def column(frame: pd.DataFrame, name: str, rows: np.ndarray | None = None) -> pd.Series:
    """Column ``name`` of ``frame``, or of its rows at positions ``rows`` (a copy of that
    one column: the preprocessing reads the training rows of a table column by column
    instead of copying them all)."""
    values = frame[name]
    return values if rows is None else values.iloc[rows]


def infer_categorical(
    frame: pd.DataFrame, categorical: list[str] | None = None, rows: np.ndarray | None = None
) -> list[str]:
    """Columns treated as categorical: the given list, else every non-numeric column.

    A numeric column must hold numbers only: a listed ``categorical`` makes every
    other column numeric, and an unlisted text column that is mostly numbers is taken
    for a numeric column with typos. Either way an unparseable value is a
    ``VTSSError`` naming the column and the values, not a silent one-hot encoding.
    Values are judged on ``frame``'s rows at ``rows`` (``None``: every row).
    """
    if categorical is not None:
        missing = [c for c in categorical if c not in frame.columns]
        if missing:
            raise VTSSError(f"categorical column(s) {missing} not found in the data")
        for c in frame.columns:
            if c not in categorical and not pd.api.types.is_numeric_dtype(frame[c]):
                check_numbers(column(frame, c, rows), c, share=0.0)
        return list(categorical)
    out = []
    for c in frame.columns:
        dtype = frame[c].dtype
        if pd.api.types.is_bool_dtype(dtype):
            out.append(c)
        elif not pd.api.types.is_numeric_dtype(dtype):
            check_numbers(column(frame, c, rows), c, share=NUMERIC_SHARE)
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


def category_pipeline(categories, max_categories: int | None = None) -> Pipeline:
    """Most-frequent imputation then one-hot (unknown categories encode as zeros).

    With ``max_categories`` a column keeps its ``max_categories - 1`` most frequent
    levels of the rows it is fitted on; the others, and unknown ones, share one
    ``infrequent`` column (scikit-learn's infrequent categories). The indicators are
    float32 (0 and 1 are exact), the dtype of the encoded matrix, so no float64 copy
    of them is made.
    """
    onehot = OneHotEncoder(
        categories=categories,
        handle_unknown="ignore" if max_categories is None else "infrequent_if_exist",
        max_categories=max_categories,
        sparse_output=False,
        dtype=np.float32,
    )
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="most_frequent", keep_empty_features=True)),
            ("onehot", onehot),
        ]
    )


def as_text(col: pd.Series) -> pd.Series:
    """A categorical column as the encoder sees it: text values, missing kept missing."""
    return col.map(lambda v: v if pd.isna(v) else str(v)).astype(object)


def id_like_columns(
    frame: pd.DataFrame, categorical: list[str], max_categories: int | None
) -> dict[str, tuple[int, int]]:
    """Categorical columns that look like IDs: ``{name: (levels, non-missing rows)}``.

    An ID column (a customer number, a timestamp as text) has more than
    ``max_categories`` levels, more than :data:`ID_SHARE` of its rows distinct: one-hot
    encoding it would add about a column per row (memory growing with rows squared)
    and carry no pattern a model could learn. ``max_categories=None`` keeps every
    column.
    """
    if max_categories is None:
        return {}
    out = {}
    for c in categorical:
        present = as_text(frame[c]).dropna()
        levels = int(present.nunique())
        if levels > max_categories and levels > ID_SHARE * len(present):
            out[c] = (levels, len(present))
    return out


def category_layout(frame: pd.DataFrame, categorical: list[str]) -> list[list] | None:
    """Category names of each categorical column over ``frame`` (names only, no statistics)."""
    if not categorical:
        return None
    text = pd.DataFrame({c: as_text(frame[c]) for c in categorical})
    encoder = category_pipeline("auto").fit(text).named_steps["onehot"]
    return [list(cats) for cats in encoder.categories_]


def numeric_values(frame: pd.DataFrame, col: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Column ``col`` (of the rows at ``rows``) as float64, numbers read as text parsed
    (a non-number is a ``VTSSError``), missing values as NaN."""
    values = column(frame, col, rows)
    if not pd.api.types.is_numeric_dtype(values):  # numbers read as text
        check_numbers(values, col, share=0.0)
        values = pd.to_numeric(values, errors="coerce")
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def numeric_block(
    frame: pd.DataFrame, cols: list[str], rows: np.ndarray | None = None, strict: bool = True
) -> np.ndarray:
    """Columns ``cols`` (of the rows at ``rows``) as one float64 matrix of its own,
    missing values as NaN.

    The rows are taken once for all the columns (one pandas selection, not one per
    column); numbers read as text are parsed, a non-number being a ``VTSSError``
    (``strict``) or NaN. The matrix is column-major, so every column is reduced
    exactly as it would be on its own.
    """
    if rows is not None:
        source = frame.iloc[rows, frame.columns.get_indexer(cols)]
    elif list(frame.columns) == list(cols):
        source = frame
    else:  # a row block: its numeric columns in one selection
        source = frame.iloc[:, frame.columns.get_indexer(cols)]
    out = np.empty((len(source), len(cols)), dtype=np.float64, order="F")
    plain = [isinstance(t, np.dtype) and t.kind in "iuf" for t in source.dtypes]
    if all(plain):  # numpy numbers only: one conversion
        out[:] = source.to_numpy(dtype=np.float64)
        return out
    for j, col in enumerate(cols):
        values = source.iloc[:, j]
        if pd.api.types.is_numeric_dtype(values):
            out[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
        elif strict:
            out[:, j] = numeric_values(source, col)
        else:
            values = pd.to_numeric(values, errors="coerce")
            out[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return out


def column_groups(cols: list[str], n_rows: int) -> list[list[str]]:
    """``cols`` in consecutive groups of at most :data:`FIT_BLOCK_VALUES` values over
    ``n_rows`` rows (at least one column each)."""
    size = max(1, FIT_BLOCK_VALUES // max(n_rows, 1))
    return [cols[i : i + size] for i in range(0, len(cols), size)]


def raise_inf(name: str) -> None:
    """±inf cannot be imputed (only NaN is) and would give NaN once scaled."""
    raise VTSSError(f"column {name!r} contains ±inf values; replace them or drop the rows")
