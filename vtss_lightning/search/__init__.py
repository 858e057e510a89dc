"""The VTSS search: candidate grid, training strategies, engine, Lightning adapters."""

from vtss_lightning.search.callback import VTSSCallback
from vtss_lightning.search.engine import SearchEngine, select
from vtss_lightning.search.grid import DEFAULT_RATIOS, Candidate, build_candidates
from vtss_lightning.search.report import CandidateResult, VTSSResult
from vtss_lightning.search.tuner import VTSSTuner

__all__ = [
    "DEFAULT_RATIOS",
    "Candidate",
    "CandidateResult",
    "SearchEngine",
    "VTSSCallback",
    "VTSSResult",
    "VTSSTuner",
    "build_candidates",
    "select",
]
