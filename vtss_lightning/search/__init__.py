"""The VTSS search: candidate grid, training strategies, engine, Lightning adapters."""

from vtss_lightning.search.callback import VTSSCallback
from vtss_lightning.search.cost_sensitive import ClassWeightResult, tune_class_weight
from vtss_lightning.search.engine import SearchEngine
from vtss_lightning.search.grid import DEFAULT_RATIOS, Candidate, build_candidates
from vtss_lightning.search.report import CandidateResult, VTSSResult
from vtss_lightning.search.selection import SELECTION_RULES, select
from vtss_lightning.search.tuner import VTSSTuner

__all__ = [
    "DEFAULT_RATIOS",
    "SELECTION_RULES",
    "Candidate",
    "ClassWeightResult",
    "CandidateResult",
    "SearchEngine",
    "VTSSCallback",
    "VTSSResult",
    "VTSSTuner",
    "build_candidates",
    "select",
    "tune_class_weight",
]
