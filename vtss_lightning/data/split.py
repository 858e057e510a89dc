"""Train/validation splits: the hold-out, K-fold folds, and one encoded split's state.

Every split is stratified and seeded, and checked so that each class keeps rows on
both sides (a class missing from validation makes its loss undefined).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split

from vtss_lightning.data.features import Features, take_rows
from vtss_lightning.data.labels import label_text
from vtss_lightning.data.pool import SyntheticPool
from vtss_lightning.data.preprocessing import Preprocessor
from vtss_lightning.errors import VTSSError
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
    preprocessor: Preprocessor
    num_classes: int
    generators: dict[int, SyntheticGenerator] = field(default_factory=dict)
    pool: SyntheticPool = field(default_factory=lambda: SyntheticPool({}))
    #: The fitted generators and pool of each other listed generator the split has used
    #: (by its position in the DataModule's ``generators``).
    stashed: dict[int, tuple[dict[int, SyntheticGenerator], SyntheticPool]] = field(
        default_factory=dict
    )

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
        """Move the tensors (and pools) to ``device`` in place; real rows that head the
        pool's buffer move with it (so training sets stay views of one buffer)."""
        heads = self.pool.head is not None and self.pool.head is self.x_train
        for name in ("y_train", "x_val", "y_val") + (() if heads else ("x_train",)):
            setattr(self, name, getattr(self, name).to(device))
        self.pool = self.pool.to(device)
        if heads:
            self.x_train = self.pool.head
        self.stashed = {j: (g, pool.to(device)) for j, (g, pool) in self.stashed.items()}

    def switch_generator(self, current: int, new: int) -> None:
        """Put the fits and pool of generator ``current`` aside and take ``new``'s
        (nothing yet when the split has not used it).

        Each pool's buffer starts with its own copy of the real rows (equal to them), so
        ``x_train`` moves to the head of the pool taken, whose training sets are then
        views of its buffer; a pool put aside keeps its buffer, real rows included.
        """
        self.stashed[current] = (self.generators, self.pool)
        self.generators, self.pool = self.stashed.pop(new, ({}, SyntheticPool({})))
        if self.pool.head is not None:
            self.x_train = self.pool.head


class RowPreprocessor(Preprocessor, Protocol):
    """A preprocessing that encodes rows of a table by position, reading them in place."""

    def transform_rows(self, x: Features, rows: np.ndarray) -> torch.Tensor: ...


def prepare_split(
    name: str,
    x: Features,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    make_preprocessor: Callable[[Features], Preprocessor],
    num_classes: int,
    device: torch.device,
    fit_rows: Callable[[Features, np.ndarray], RowPreprocessor] | None = None,
) -> PreparedSplit:
    """Fit the preprocessing on the training rows only and encode both sides on ``device``.

    ``val_idx`` may be empty (the refit on every development row has no validation).
    ``fit_rows(x, train_idx)``, when given, fits on the training rows of ``x`` read in
    place and encodes both sides by position; otherwise ``make_preprocessor`` gets a
    copy of the training rows, let go once encoded. Either way the split keeps its
    float32 tensors only.
    """
    if fit_rows is not None:
        preprocessor = fit_rows(x, train_idx)
        x_train = preprocessor.transform_rows(x, train_idx).to(device)
        if len(val_idx):
            x_val = preprocessor.transform_rows(x, val_idx).to(device)
    else:
        x_train_raw = take_rows(x, train_idx)
        preprocessor = make_preprocessor(x_train_raw)
        x_train = preprocessor.transform(x_train_raw).to(device)
        del x_train_raw
        if len(val_idx):
            x_val = preprocessor.transform(take_rows(x, val_idx)).to(device)
    return PreparedSplit(
        name=name,
        train_index=train_idx,
        val_index=val_idx,
        x_train=x_train,
        y_train=torch.as_tensor(y[train_idx]).to(device),
        x_val=x_val if len(val_idx) else x_train.new_empty((0, *x_train.shape[1:])),
        y_val=torch.as_tensor(y[val_idx]).to(device),
        preprocessor=preprocessor,
        num_classes=num_classes,
    )


def holdout_indices(
    y: np.ndarray, classes: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and validation positions of a stratified, seeded hold-out split."""
    num_classes = len(classes)
    counts = np.bincount(y, minlength=num_classes)
    for k, n in enumerate(counts):
        if n < 2:
            raise VTSSError(
                f"class {label_text(classes[k])} has {n} row(s); each class needs at least 2 "
                "(one for training, one for validation)"
            )
    n_val = int(np.ceil(val_fraction * len(y)))
    if min(n_val, len(y) - n_val) < num_classes:
        raise VTSSError(
            f"val_fraction={val_fraction} puts {n_val} of {len(y)} rows into validation, "
            f"but each of the {num_classes} classes needs a row on both sides; "
            "change val_fraction"
        )
    train_idx, val_idx = train_test_split(
        np.arange(len(y)), test_size=val_fraction, stratify=y, random_state=seed
    )
    missing = set(range(num_classes)) - set(y[val_idx].tolist())
    if missing:
        names = "[" + ", ".join(label_text(classes[k]) for k in sorted(missing)) + "]"
        raise VTSSError(
            f"the validation split has no rows of class(es) {names}; raise val_fraction "
            "or use folds= on the VTSSCallback"
        )
    return np.sort(train_idx), np.sort(val_idx)


def stratified_folds(
    y: np.ndarray, classes: np.ndarray, folds: int, repeats: int, seed: int
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Stratified (repeated) K-fold over ``y``: ``("fold r.k", train, val)`` per fold."""
    counts = np.bincount(y, minlength=len(classes))
    if folds < 2:
        raise VTSSError(f"folds must be >= 2, got {folds}")
    if counts.min() < folds:
        k = int(counts.argmin())
        raise VTSSError(
            f"class {label_text(classes[k])} has {counts[k]} rows, fewer than folds={folds}; "
            "use fewer folds"
        )
    splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    for i, (tr, va) in enumerate(splitter.split(np.zeros(len(y)), y)):
        yield f"fold {i // folds + 1}.{i % folds + 1}", tr, va
