"""Non-synthetic baselines offered beside VTSS: random oversampling, tuned class weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vtss_lightning import TabularDataModule, VTSSError
from vtss_lightning.baselines import tune_class_weight
from vtss_lightning.generators import RandomOversampler
from vtss_lightning.models import TabularClassifier

TRAINER = {"max_epochs": 1, "accelerator": "cpu"}  # L-BFGS: one full-batch epoch converges


def imbalanced_dm(seed: int = 0, n0: int = 300, n1: int = 30) -> TabularDataModule:
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(size=(n0, 3)), rng.normal(size=(n1, 3)) + [1.5, 0, 0]])
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    return TabularDataModule.from_arrays(x.astype(np.float32), y, seed=seed)


def test_random_oversampler_copies_training_rows_exactly():
    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    gen = RandomOversampler().fit(x, seed=0)
    out = gen.sample(50, generator_seed=3)
    assert out.shape == (50, 3)
    # every synthetic row is one of the real rows, and all of them show up
    matches = (out[:, None, :] == x[None, :, :]).all(-1)
    assert matches.any(1).all()
    assert matches.any(0).all()
    assert torch.equal(out, gen.sample(50, generator_seed=3))
    assert repr(gen) == "RandomOversampler()"


def test_tuned_weight_picks_the_lowest_balanced_validation_loss():
    dm = imbalanced_dm()
    res = tune_class_weight(
        lambda w: TabularClassifier(class_weight=w), dm, [1.0, 10.0], TRAINER, seed=0
    )
    assert res.weights == [1.0, 10.0]
    assert all(v is not None and np.isfinite(v) for v in res.val_balanced_loss)
    # 1:10 imbalance: weighting the minority by ~10 balances the loss, which the
    # balanced criterion rewards on this overlapping design
    assert res.best_weight == 10.0
    assert res.val_balanced_loss[1] < res.val_balanced_loss[0]
    again = tune_class_weight(
        lambda w: TabularClassifier(class_weight=w), imbalanced_dm(), [1.0, 10.0], TRAINER
    )
    assert again.val_balanced_loss == res.val_balanced_loss


def test_tuned_weight_with_folds_averages_fold_losses():
    dm = imbalanced_dm()
    res = tune_class_weight(
        lambda w: TabularClassifier(class_weight=w), dm, [1.0, 4.0], TRAINER, folds=3
    )
    assert [len(r) for r in res.fold_losses] == [3, 3]
    for mean, row in zip(res.val_balanced_loss, res.fold_losses, strict=True):
        assert mean == pytest.approx(sum(row) / 3)
    assert dm.active is dm.holdout  # the DataModule is back on its hold-out split


@pytest.mark.parametrize("weights", [[], [0.0], [1.0, float("nan")], [-2.0]])
def test_bad_weights_are_refused(weights):
    with pytest.raises(VTSSError, match="weights must be"):
        tune_class_weight(lambda w: TabularClassifier(class_weight=w), imbalanced_dm(), weights)
