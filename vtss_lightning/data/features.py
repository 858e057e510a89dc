"""Raw development features: a ``DataFrame`` (tables) or a tensor (arrays, images).

Splits, preprocessing and frame generators index both kinds the same way, through
the helpers here, so no caller needs to know which kind it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from vtss_lightning.errors import VTSSError

Features = pd.DataFrame | torch.Tensor
#: The largest float32 value: encoded features are float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def as_features(x: Any, what: str = "training data") -> Features:
    """A frame with a fresh index, a CPU tensor, or anything array-like as float32.

    Finite values beyond float32 are a ``VTSSError`` naming the column and ``what``
    (the rows' role), not a silent ``inf``.
    """
    if isinstance(x, pd.DataFrame):
        return fresh_index(x.copy(deep=False))  # the caller's columns, not a copy of them
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.float64 and len(x):
            check_float32(x.reshape(len(x), -1).numpy(), None, what)
        return x
    values = np.asarray(x)
    if values.dtype.kind == "f" and values.dtype.itemsize > 4 and values.ndim and len(values):
        check_float32(values.reshape(len(values), -1), None, what)
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


def maybe_features(x: Any, what: str = "test data") -> Features | None:
    """:func:`as_features` of test features, passing ``None`` (no test data) through."""
    return None if x is None else as_features(x, what)


def extreme(values: np.ndarray) -> float:
    """The value of largest magnitude (ignoring NaN; NaN when all are)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or np.isnan(values).all():
        return float("nan")
    return float(values[np.nanargmax(np.abs(values))])


def check_float32(values: np.ndarray, names: Sequence[str] | None, what: str) -> None:
    """Raise when finite float64 ``values`` (rows x columns) overflow float32.

    ``names`` are the columns as the user wrote them (``None``: numbered feature
    columns), ``what`` the rows' role (``"training data"``, ``"test data"``).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return
    values = values.reshape(len(values), -1)
    with np.errstate(invalid="ignore"):
        over = np.isfinite(values) & (np.abs(values) > FLOAT32_MAX)
    if not over.any():
        return
    j = int(np.flatnonzero(over.any(axis=0))[0])
    column = (
        f"feature column {j} (counting from 0)" if names is None else f"column {list(names)[j]!r}"
    )
    raise VTSSError(
        f"{column} in the {what} has a value of {extreme(values[over[:, j], j]):.3g}, "
        "beyond float32 (±3.4e38); rescale it (e.g. other units or a log)"
    )


def fresh_index(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` itself with the index ``0 .. n-1`` (set in place: ``reset_index``
    would copy every column)."""
    frame.index = pd.RangeIndex(len(frame))
    return frame


def take_rows(x: Features, idx: np.ndarray) -> Features:
    """Rows ``idx`` of ``x``, as the same kind (frames get a fresh index)."""
    if isinstance(x, pd.DataFrame):
        return fresh_index(x.iloc[idx])
    return x[torch.as_tensor(idx, dtype=torch.long)]


def as_frame(x: Features) -> pd.DataFrame:
    """``x`` as a ``DataFrame`` for frame generators; tensor rows get columns ``x0, x1, ...``."""
    if isinstance(x, pd.DataFrame):
        return x
    flat = x.reshape(len(x), -1).numpy()
    return pd.DataFrame(flat, columns=[f"x{i}" for i in range(flat.shape[1])])
