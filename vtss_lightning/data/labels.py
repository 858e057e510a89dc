"""Class labels of any type as indices ``0..K-1``, checked once when the data are set up.

Everything downstream (splits, gaps, pools, metrics) works with the indices; the
labels themselves only come back in messages and reports (``classes_``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.preprocessing import LabelEncoder

from vtss_lightning.errors import VTSSError


def label_keys(y: np.ndarray) -> np.ndarray:
    """Labels as a sortable array; mixed types compare as strings."""
    y = np.asarray(y)
    if y.dtype.kind in "biuf":
        return y
    return np.asarray([str(v) for v in y], dtype=object)


class LabelCodec:
    """The sorted classes of the development labels and the map to their indices.

    Parameters
    ----------
    y
        Development labels; missing labels or a single class are a ``VTSSError``.
    """

    def __init__(self, y: np.ndarray) -> None:
        if pd.isna(pd.Series(y)).any():
            raise VTSSError("the target has missing labels; drop those rows or fill them")
        self._encoder = LabelEncoder().fit(label_keys(y))
        self.classes_: np.ndarray = self._encoder.classes_
        if len(self.classes_) < 2:
            raise VTSSError(
                f"the target has only one class ({self.classes_[0]!r}); need at least two"
            )

    def encode(self, y: np.ndarray, what: str = "training") -> np.ndarray:
        """Class indices of ``y``; a label never seen in development is a ``VTSSError``."""
        keys = label_keys(y)
        unknown = sorted(set(keys) - set(self.classes_.tolist()))
        if unknown:
            raise VTSSError(
                f"the {what} labels contain classes never seen in training: {unknown[:5]}"
            )
        return self._encoder.transform(keys).astype(np.int64)


def label_text(label) -> str:
    """A class label as the user wrote it, for messages: ``2`` or ``'fraud'``, never
    ``np.int64(2)`` or ``np.str_('fraud')``."""
    value = label.item() if isinstance(label, np.generic) else label
    return repr(value) if isinstance(value, str) else str(value)
