"""Selection rules (min, one_se, smooth) and their spread over repetitions."""

from __future__ import annotations

import numpy as np
import pytest

from vtss_lightning import TabularDataModule, VTSSCallback, VTSSError
from vtss_lightning.search import SearchEngine, select
from vtss_lightning.search.report import CandidateResult
from vtss_lightning.search.strategies import BaseScorer


def _cand(ratio, loss, folds=()):
    return CandidateResult(
        ratio=ratio, sizes={"1": int(100 * ratio)}, val_balanced_loss=loss, fold_losses=list(folds)
    )


def test_min_picks_lowest_and_ties_go_smaller():
    cands = [_cand(0.0, 0.5), _cand(0.5, 0.3), _cand(1.0, 0.3), _cand(2.0, 0.4)]
    assert select(cands, "min").ratio == 0.5


def test_smooth_ignores_a_lone_dip():
    # a single noisy dip at 0.25 next to bad neighbours; the broad basin around 1 wins
    losses = {0.0: 0.60, 0.25: 0.30, 0.5: 0.60, 0.75: 0.36, 1.0: 0.34, 1.25: 0.35, 2.0: 0.50}
    cands = [_cand(r, v) for r, v in losses.items()]
    assert select(cands, "min").ratio == 0.25
    assert select(cands, "smooth").ratio == 1.0


def test_one_se_moves_toward_full_balance_within_one_standard_error():
    # best at 0.5 with fold sd 0.1 over 4 folds -> se 0.05; 0.9 (loss +0.03) is within, 1.0 (+0.08) not
    best_folds = [0.2, 0.3, 0.4, 0.3]
    cands = [
        _cand(0.0, 0.5, [0.5] * 4),
        _cand(0.5, 0.3, best_folds),
        _cand(0.9, 0.33, [0.33] * 4),
        _cand(1.0, 0.38, [0.38] * 4),
    ]
    se = np.std(best_folds, ddof=1) / 2
    assert 0.03 < se < 0.08
    assert select(cands, "one_se").ratio == 0.9


def test_one_se_needs_folds_and_unknown_rule_is_rejected():
    with pytest.raises(VTSSError, match="folds"):
        select([_cand(0.0, 0.3), _cand(1.0, 0.2)], "one_se")
    with pytest.raises(VTSSError, match="selection"):
        select([_cand(0.0, 0.3)], "median")
    with pytest.raises(VTSSError, match="folds"):
        VTSSCallback(selection="one_se", folds=None)
    with pytest.raises(VTSSError):
        SearchEngine(selection="best")


class _NoisyScorer(BaseScorer):
    """Loss = (ratio - 1)^2 + fold-dependent noise: every repeat can pick differently."""

    def __init__(self):
        super().__init__(template=None, settings=None)
        self.rng = np.random.default_rng(0)

    def begin_split(self, dm):
        self.gap = dm.class_gaps()[1]

    def score(self, dm, sizes):
        ratio = sizes.get(1, 0) / self.gap
        return (ratio - 1.0) ** 2 + float(self.rng.normal(0, 0.05))


def test_repeated_folds_report_selection_spread():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 1, (200, 2)), rng.normal(1, 1, (40, 2))])
    y = np.r_[np.zeros(200, int), np.ones(40, int)]
    dm = TabularDataModule.from_arrays(x, y)
    dm.setup()
    engine = SearchEngine(
        ratios=[0, 0.5, 1, 1.5, 2], folds=3, repeats=4, verbose=False, selection="one_se"
    )
    result = engine.run(dm, _NoisyScorer())
    diag = result.diagnostics
    assert diag["selection"] == "one_se"
    assert len(diag["selection_by_repeat"]) == 4
    assert all(r in (0, 0.5, 1, 1.5, 2) for r in diag["selection_by_repeat"])
    picks = np.array(diag["selection_by_repeat"], dtype=float)
    assert diag["selection_sd"] == pytest.approx(picks.std(ddof=1))
    assert result.selected_ratio == 1.0
