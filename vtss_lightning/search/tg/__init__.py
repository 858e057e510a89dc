"""TG-VTSS: the theory-guided grid of Ma & Zhang, arXiv 2601.16120.

A pilot trained on the real rows (:func:`run_tg_diagnostics`) is read in its last
layer: a test of local symmetry (:mod:`.symmetry`; calibrated by default, the
paper's chi-square Wald test with ``test="chi2"``), a cross-fitted
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
    HEAD_LOSSES,
    balanced_weights,
    fit_balanced_logistic,
    fit_head,
    psd_solve,
    whitening_basis,
)
from vtss_lightning.search.tg.head_stats import (
    ClassScores,
    PilotStats,
    class_scores,
    design_statistics,
    head_features,
    head_layer,
)
from vtss_lightning.search.tg.pilot import run_tg_diagnostics
from vtss_lightning.search.tg.quality import BIASED, REALISTIC, GeneratorQuality
from vtss_lightning.search.tg.symmetry import (
    ASYMMETRIC,
    CALIBRATED,
    CHI2,
    SYMMETRIC,
    TESTS,
    SymmetryTest,
    box_statistic,
    symmetry_test,
    wald_statistic,
)

__all__ = [
    "ASYMMETRIC",
    "BIASED",
    "CALIBRATED",
    "CHI2",
    "HEAD_LOSSES",
    "LOCAL_MULTIPLIERS",
    "REALISTIC",
    "SYMMETRIC",
    "SYMMETRIC_RATIOS",
    "TESTS",
    "WIDE_RATIOS",
    "ClassScores",
    "PilotStats",
    "GeneratorQuality",
    "SymmetryTest",
    "TGDiagnostics",
    "balanced_weights",
    "box_statistic",
    "class_scores",
    "design_statistics",
    "fit_balanced_logistic",
    "fit_head",
    "head_features",
    "head_layer",
    "psd_solve",
    "run_tg_diagnostics",
    "symmetry_test",
    "theory_target",
    "tg_candidate_ratios",
    "tg_diagnostics",
    "wald_statistic",
    "whitening_basis",
]
