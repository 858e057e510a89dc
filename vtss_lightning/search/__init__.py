"""The VTSS search: candidate grid, training strategies, engine, Lightning adapters."""

from vtss_lightning.search.callback import VTSSCallback
from vtss_lightning.search.config import SearchConfig
from vtss_lightning.search.engine import SearchEngine
from vtss_lightning.search.grid import DEFAULT_RATIOS, Candidate, build_candidates
from vtss_lightning.search.report import CandidateResult, VTSSResult
from vtss_lightning.search.selection import SELECTION_RULES, select
from vtss_lightning.search.tuner import VTSSTuner

__all__ = [
    "DEFAULT_RATIOS",
    "SELECTION_RULES",
    "Candidate",
    "CandidateResult",
    "SearchConfig",
    "SearchEngine",
    "VTSSCallback",
    "VTSSResult",
    "VTSSTuner",
    "build_candidates",
    "select",
]
