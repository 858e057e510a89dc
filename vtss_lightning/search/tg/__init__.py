"""TG-VTSS: the theory-guided grid of Ma & Zhang, arXiv 2601.16120.

A pilot trained on the real rows (:func:`run_tg_diagnostics`) is read in its last
layer: a Wald test of local symmetry (:mod:`.symmetry`), a cross-fitted
generator-quality score (:mod:`.quality`), and the candidate grid they imply
(:mod:`.grid`); :func:`tg_diagnostics` runs the steps on a trained pilot and returns
a :class:`TGDiagnostics`.
"""

from vtss_lightning.search.tg.diagnostics import TGDiagnostics, tg_diagnostics
from vtss_lightning.search.tg.grid import (
    LOCAL_MULTIPLIERS,
    SYMMETRIC_RATIOS,
    WIDE_RATIOS,
    tg_candidate_ratios,
    theory_target,
)
from vtss_lightning.search.tg.head_fit import (
    balanced_weights,
    fit_balanced_logistic,
    fit_head,
    psd_solve,
    whitening_basis,
)
from vtss_lightning.search.tg.head_stats import ClassScores, class_scores, head_features, head_layer
from vtss_lightning.search.tg.pilot import run_tg_diagnostics
from vtss_lightning.search.tg.quality import BIASED, REALISTIC, GeneratorQuality
from vtss_lightning.search.tg.symmetry import ASYMMETRIC, SYMMETRIC, SymmetryTest, wald_statistic

__all__ = [
    "ASYMMETRIC",
    "BIASED",
    "LOCAL_MULTIPLIERS",
    "REALISTIC",
    "SYMMETRIC",
    "SYMMETRIC_RATIOS",
    "WIDE_RATIOS",
    "ClassScores",
    "GeneratorQuality",
    "SymmetryTest",
    "TGDiagnostics",
    "balanced_weights",
    "class_scores",
    "fit_balanced_logistic",
    "fit_head",
    "head_features",
    "head_layer",
    "psd_solve",
    "run_tg_diagnostics",
    "theory_target",
    "tg_candidate_ratios",
    "tg_diagnostics",
    "wald_statistic",
    "whitening_basis",
]
