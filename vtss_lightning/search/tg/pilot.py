"""The TG-VTSS pilot: one fit on the real training rows, then the diagnostics.

The diagnostics (Ma & Zhang, arXiv 2601.16120, "TG-VTSS") read a model trained
without synthetic rows; it is trained exactly like a search candidate of size zero
(same clone of the initial weights, seed, budget and inner-fit recipe), so the pilot
is the ``retrain`` candidate at ratio 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtss_lightning.search.strategies.base import is_full_batch
from vtss_lightning.search.strategies.inner_fit import clone_module, fit_candidate
from vtss_lightning.search.strategies.settings import TrainerSettings
from vtss_lightning.search.tg.diagnostics import TGDiagnostics, tg_diagnostics

if TYPE_CHECKING:  # either Lightning package at run time (vtss_lightning._lightning)
    import pytorch_lightning as pl


def run_tg_diagnostics(
    module: pl.LightningModule,
    dm,
    settings: TrainerSettings,
    seed: int,
    verbose: bool,
    **options,
) -> TGDiagnostics:
    """Train a pilot on ``dm``'s real training rows and run :func:`tg_diagnostics` on it.

    Parameters
    ----------
    module
        The user's module at its initial weights; a clone is trained, ``module`` is
        left untouched.
    dm
        A set-up two-class VTSS DataModule (its active split is used).
    settings
        The inner Trainer's settings (device, precision, budget), as for candidates.
    seed
        Seed of the pilot's fit and of the diagnostics (folds, generator fits, draws).
    verbose
        Print the diagnostics' summary.
    options
        Passed to :func:`tg_diagnostics`: ``test`` (``"calibrated"`` or ``"chi2"``),
        ``alpha``, ``tau``, ``folds``, ``head_loss``, ``join_weak``.
    """
    pilot = clone_module(module)
    loader = dm.make_train_loader({}, full_batch=is_full_batch(pilot))
    fit_candidate(pilot, loader, settings, seed, dm=dm, sizes={})
    pilot.to(dm.active.x_train.device)
    diag = tg_diagnostics(pilot, dm, seed=seed, **options)
    if verbose:
        print(diag.summary(), flush=True)
    return diag
