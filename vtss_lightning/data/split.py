"""One train/validation split, encoded, with its generators and synthetic pool."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vtss_lightning.data.pool import SyntheticPool
from vtss_lightning.generators.base import SyntheticGenerator


@dataclass
class PreparedSplit:
    """Everything derived from one choice of training rows.

    The preprocessing, the generators and the pool belong to the split because they
    are fitted on its training rows only; a K-fold search builds one per fold.

    Attributes
    ----------
    name
        ``"holdout"`` for the main split, ``"fold r.k"`` for cross-validation folds.
    train_index, val_index
        Row positions in the development data (for leakage audits).
    """

    name: str
    train_index: np.ndarray
    val_index: np.ndarray
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    preprocessor: object
    num_classes: int
    generators: dict[int, SyntheticGenerator] = field(default_factory=dict)
    pool: SyntheticPool = field(default_factory=lambda: SyntheticPool({}))

    @property
    def class_counts(self) -> list[int]:
        """Real training rows per class index."""
        return torch.bincount(self.y_train.cpu(), minlength=self.num_classes).tolist()

    @property
    def gaps(self) -> dict[int, int]:
        """Rows each class lacks to match the largest class (``n_max - n_k``)."""
        counts = self.class_counts
        n_max = max(counts)
        return {k: n_max - n for k, n in enumerate(counts)}

    def to(self, device: torch.device) -> None:
        """Move the tensors (and pool) to ``device`` in place."""
        for name in ("x_train", "y_train", "x_val", "y_val"):
            setattr(self, name, getattr(self, name).to(device))
        self.pool = self.pool.to(device)
