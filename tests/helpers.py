"""Pieces several test modules share: small data, a user's own module, a quiet Trainer.

Each test module binds its own defaults (``functools.partial`` or a subclass), so the
data and models a test sees are spelled out where the test is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from vtss_lightning import TabularDataModule
from vtss_lightning._random import pool_chunk_seed


def paper_linear_dm(n0: int, n1: int, seed: int = 0, generator=None) -> TabularDataModule:
    """The paper's experiment 1 data (mixture minority), 80/20 split, set up."""
    from vtss_lightning.data.builtin import simulate_paper_linear
    from vtss_lightning.generators import SMOTEGenerator

    x, y = simulate_paper_linear(n0, n1, np.random.default_rng(seed))
    dm = TabularDataModule.from_arrays(x, y, generator=generator or SMOTEGenerator(), seed=seed)
    dm.setup()
    return dm


def mean_shift_dm(n0: int, n1: int, d: int, seed: int = 0) -> TabularDataModule:
    """X = -mu + xi (class 0) or +mu + xi (class 1), Gaussian xi, |mu| = 1, unscaled
    (a locally symmetric design), set up."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n0 + n1, d))
    x[:n0, 0] -= 1.0
    x[n0:, 0] += 1.0
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    dm = TabularDataModule.from_arrays(x, y, scale=False, seed=seed)
    dm.setup()
    return dm


def _two_classes(rng, n_neg, n_pos, n_features, shift, shifted_columns):
    """Standard normal rows; the last ``n_pos`` moved by ``shift`` in the first
    ``shifted_columns`` columns (every column when ``None``)."""
    x = rng.normal(size=(n_neg + n_pos, n_features))
    x[n_neg:, :shifted_columns] += shift
    return x


def tabular_dm(
    n_neg: int,
    n_pos: int,
    *,
    n_features: int = 3,
    shift: float = 1.0,
    shifted_columns: int | None = None,
    labels: Sequence[str] = ("neg", "pos"),
    n_test: int = 0,
    seed: int = 0,
    setup: bool = False,
    **kwargs,
) -> TabularDataModule:
    """An imbalanced two-class :class:`TabularDataModule` from Gaussian rows.

    ``n_neg`` rows of ``labels[0]`` then ``n_pos`` of ``labels[1]`` (shifted, see
    :func:`_two_classes`). ``n_test > 0`` adds a balanced test set of ``n_test`` rows
    per class, drawn after the training rows from the same generator. ``seed`` seeds
    both the rows and the DataModule; ``kwargs`` go to ``from_arrays``; ``setup`` calls
    ``dm.setup()`` before returning.
    """
    rng = np.random.default_rng(seed)
    x = _two_classes(rng, n_neg, n_pos, n_features, shift, shifted_columns)
    y = np.array([labels[0]] * n_neg + [labels[1]] * n_pos)
    x_test = y_test = None
    if n_test:
        x_test = _two_classes(rng, n_test, n_test, n_features, shift, shifted_columns)
        y_test = np.array([labels[0]] * n_test + [labels[1]] * n_test)
    dm = TabularDataModule.from_arrays(x, y, x_test=x_test, y_test=y_test, seed=seed, **kwargs)
    if setup:
        dm.setup()
    return dm


class LinearModule(pl.LightningModule):
    """A user's own module: one ``nn.Linear``, mean cross-entropy, plain SGD.

    Sized from the arguments, or from the Trainer's DataModule in ``configure_model``
    when ``n_features`` is ``None``. Subclasses set ``lr`` and ``momentum``.
    """

    lr = 0.1
    momentum = 0  # torch.optim.SGD's own default

    def __init__(self, n_features: int | None = None, num_classes: int | None = None):
        super().__init__()
        self.layer: nn.Linear | None = None
        if n_features is not None:
            self.layer = nn.Linear(n_features, num_classes)

    def configure_model(self):
        if self.layer is None:
            dm = self.trainer.datamodule
            self.layer = nn.Linear(dm.n_features, dm.num_classes)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A ``pl.Trainer`` without progress bar or model summary; ``kwargs`` as given."""
    return pl.Trainer(enable_progress_bar=False, enable_model_summary=False, **kwargs)


def progress_lines(text: str) -> list[str]:
    """The search's per-candidate progress lines in captured output or a log."""
    return [ln for ln in text.splitlines() if ln.startswith("VTSS [")]


def old_pool(dm, k: int, m: int) -> torch.Tensor:
    """Class ``k``'s first ``m`` pool rows as the builder before issue 15 drew them:
    every chunk sampled on its own, joined by ``torch.cat``, cut."""
    split, builder = dm.active, dm.pool_builder
    c = builder.chunk_rows
    chunks = [
        builder.sample(split, split.generators[k], c, pool_chunk_seed(dm.seed, k, j))
        for j in range(-(-m // c))
    ]
    return torch.cat(chunks)[:m]


def small_mlp(dm):
    """A seeded one-hidden-layer AdamW ``TabularClassifier`` sized from ``dm``."""
    from vtss_lightning.models import TabularClassifier

    torch.manual_seed(0)
    model = TabularClassifier(hidden_dims=[8], optimizer="adamw", lr=0.02)
    model.configure_from_data(dm)
    return model
