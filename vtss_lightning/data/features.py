"""Raw development features: a ``DataFrame`` (tables) or a tensor (arrays, images).

Splits, preprocessing and frame generators index both kinds the same way, through
the helpers here, so no caller needs to know which kind it holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

Features = pd.DataFrame | torch.Tensor


def as_features(x: Any) -> Features:
    """A frame with a fresh index, a CPU tensor, or anything array-like as float32."""
    if isinstance(x, pd.DataFrame):
        return x.reset_index(drop=True)
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def maybe_features(x: Any) -> Features | None:
    """:func:`as_features`, passing ``None`` (no test data) through."""
    return None if x is None else as_features(x)


def take_rows(x: Features, idx: np.ndarray) -> Features:
    """Rows ``idx`` of ``x``, as the same kind (frames get a fresh index)."""
    if isinstance(x, pd.DataFrame):
        return x.iloc[idx].reset_index(drop=True)
    return x[torch.as_tensor(idx, dtype=torch.long)]


def as_frame(x: Features) -> pd.DataFrame:
    """``x`` as a ``DataFrame`` for frame generators; tensor rows get columns ``x0, x1, ...``."""
    if isinstance(x, pd.DataFrame):
        return x
    flat = x.reshape(len(x), -1).numpy()
    return pd.DataFrame(flat, columns=[f"x{i}" for i in range(flat.shape[1])])
