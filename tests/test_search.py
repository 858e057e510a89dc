"""The search engine without a Trainer: fake scorers with known loss curves."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
from helpers import progress_lines, tabular_dm

from vtss_lightning import VTSSError, VTSSResult
from vtss_lightning.search import (
    DEFAULT_RATIOS,
    CandidateResult,
    SearchEngine,
    build_candidates,
    select,
)
from vtss_lightning.search.strategies import BaseScorer

# --------------------------------------------------------------------------- helpers


#: 100 vs 25 rows, 3 features all shifted by 1.0; set up.
make_dm = partial(tabular_dm, n_neg=100, n_pos=25, setup=True)


def rounded(ratio, gaps):
    return {k: int(math.floor(ratio * g + 0.5)) for k, g in gaps.items() if g > 0}


class FakeScorer(BaseScorer):
    """Loss is a known function of the share of the active split's gap that is filled.

    Also checks, for every call, that the engine prepared a pool large enough for the
    sizes it asks for (``training_tensors`` would raise otherwise).
    """

    def __init__(self, loss_of_ratio):
        super().__init__(template=None, settings=None)
        self.loss_of_ratio = loss_of_ratio
        self.calls = []  # (split name, gaps, sizes)
        self.splits = []

    def begin_split(self, dm):
        self.splits.append(dm.active.name)

    def score(self, dm, sizes):
        gaps = dm.class_gaps()
        self.calls.append((dm.active.name, dict(gaps), dict(sizes)))
        _, y = dm.training_tensors(sizes)
        assert len(y) == sum(dm.active.class_counts) + sum(sizes.values())
        ratio = sum(sizes.values()) / sum(gaps.values())
        return self.loss_of_ratio(ratio, dm.active.name)


def parabola(ratio, split=None):
    return (ratio - 1.25) ** 2 + 0.3


# --------------------------------------------------------------------------- selection


def test_selects_the_minimum_of_the_curve():
    dm = make_dm()
    scorer = FakeScorer(parabola)
    result = SearchEngine(verbose=False).run(dm, scorer)
    assert result.selected_ratio == 1.25
    gaps = dm.class_gaps()
    assert gaps == {0: 0, 1: 60}
    assert result.selected_index_sizes == {1: 75}
    assert result.selected_sizes == {"pos": 75}
    assert [c.ratio for c in result.candidates] == list(DEFAULT_RATIOS)
    for cand in result.candidates:
        assert cand.sizes == {"pos": rounded(cand.ratio, gaps)[1]}
        assert cand.val_balanced_loss == pytest.approx(parabola(cand.sizes["pos"] / 60))
        assert cand.status == "ok"
        assert cand.fold_losses == []  # hold-out: no per-fold list
    # one split, every candidate scored once, in increasing size
    assert scorer.splits == ["holdout"]
    assert [c[2][1] for c in scorer.calls] == [rounded(r, gaps)[1] for r in DEFAULT_RATIOS]
    # the DataModule's pool was drawn once, at the largest candidate
    assert dm.holdout.pool.capacity == {1: 120}


def test_minimum_elsewhere_is_followed():
    dm = make_dm()
    result = SearchEngine(verbose=False).run(dm, FakeScorer(lambda r, s: abs(r - 0.5)))
    assert result.selected_ratio == 0.5
    result = SearchEngine([0, 1, 2], verbose=False).run(dm, FakeScorer(lambda r, s: -r))
    assert result.selected_ratio == 2.0


def test_exact_ties_go_to_the_smaller_size():
    dm = make_dm()
    result = SearchEngine(verbose=False).run(dm, FakeScorer(lambda r, s: 1.0))
    assert result.selected_ratio == 0.0
    assert result.selected_index_sizes == {1: 0}
    # a plateau from full balance on: the smallest size on the plateau wins
    plateau = FakeScorer(lambda r, s: 0.5 if r >= 1 else 0.9)
    result = SearchEngine(verbose=False).run(dm, plateau)
    assert result.selected_ratio == 1.0


def test_near_ties_within_tolerance_go_to_the_smaller_size():
    dm = make_dm()
    # larger sizes are better only by 1e-13 (float noise): not a real improvement
    scorer = FakeScorer(lambda r, s: 0.5 - 1e-13 * r if r >= 1 else 0.9)
    assert SearchEngine(verbose=False).run(dm, scorer).selected_ratio == 1.0
    # a real improvement is taken
    scorer = FakeScorer(lambda r, s: 0.5 - 1e-3 * r if r >= 1 else 0.9)
    assert SearchEngine(verbose=False).run(dm, scorer).selected_ratio == 4.0  # grid followed


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_candidate_is_marked_failed_and_skipped(bad):
    dm = make_dm()
    scorer = FakeScorer(lambda r, s: bad if r == 1.25 else parabola(r))
    result = SearchEngine(verbose=False).run(dm, scorer)
    failed = [c for c in result.candidates if c.ratio == 1.25]
    assert len(failed) == 1
    assert failed[0].val_balanced_loss is None
    assert failed[0].status.startswith("failed")
    assert all(c.status == "ok" for c in result.candidates if c.ratio != 1.25)
    assert result.selected_ratio == 1.1  # next best on the parabola (1.5 is farther)
    json.loads(result.to_json())  # still serialisable


def test_all_candidates_failing_is_a_vtss_error():
    dm = make_dm()
    with pytest.raises(VTSSError, match="every candidate failed"):
        SearchEngine(verbose=False).run(dm, FakeScorer(lambda r, s: math.nan))


def test_absolute_sizes_candidates():
    dm = make_dm()
    scorer = FakeScorer(lambda r, s: abs(r * 60 - 30))  # best at 30 rows
    sizes = [{"pos": 90}, {"pos": 5}, {"pos": 30}, {"pos": 0}]  # keyed by class name
    result = SearchEngine(sizes=sizes, verbose=False).run(dm, scorer)
    assert [c[2] for c in scorer.calls] == [{1: 0}, {1: 5}, {1: 30}, {1: 90}]
    assert [c.sizes for c in result.candidates] == [{"pos": m} for m in (0, 5, 30, 90)]
    assert all(c.ratio is None for c in result.candidates)
    assert result.selected_ratio is None
    assert result.selected_sizes == {"pos": 30}
    assert result.selected_index_sizes == {1: 30}
    assert dm.holdout.pool.capacity == {1: 90}


def test_verbose_prints_one_line_per_candidate(capsys):
    dm = make_dm()
    SearchEngine([0, 1, 2], verbose=True).run(dm, FakeScorer(parabola))
    out = capsys.readouterr().out
    assert len(progress_lines(out)) == 3
    assert "VTSS selected ratio 1" in out
    SearchEngine([0, 1, 2], verbose=False).run(dm, FakeScorer(parabola))
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- folds


def test_folds_rescale_sizes_to_each_folds_gap():
    dm = make_dm(n_neg=100, n_pos=22)
    ratios = [0.0, 0.75, 1.0, 1.5]
    fold_no = {}

    def loss(r, split):
        fold_no.setdefault(split, len(fold_no))
        return parabola(r) + 0.01 * fold_no[split]

    scorer = FakeScorer(loss)
    result = SearchEngine(ratios, folds=3, repeats=2, verbose=False).run(dm, scorer)
    assert scorer.splits == ["fold 1.1", "fold 1.2", "fold 1.3", "fold 2.1", "fold 2.2", "fold 2.3"]
    assert len(scorer.calls) == 6 * len(ratios)
    holdout_gap = dm.class_gaps()[1]
    fold_gaps = set()
    for j, (split, gaps, sizes) in enumerate(scorer.calls):
        assert split == scorer.splits[j // len(ratios)]
        ratio = ratios[j % len(ratios)]
        assert sizes == rounded(ratio, gaps)
        fold_gaps.add(gaps[1])
    assert holdout_gap not in fold_gaps  # sizes really were rescaled, not copied
    for cand in result.candidates:
        assert len(cand.fold_losses) == 6
        assert cand.val_balanced_loss == pytest.approx(np.mean(cand.fold_losses))
        # reported sizes are the hold-out's
        assert cand.sizes == {"pos": rounded(cand.ratio, {1: holdout_gap})[1]}
    assert result.selected_ratio == 1.0  # nearest to 1.25 among the grid
    assert result.diagnostics["validation"] == "2x3-fold"
    assert result.diagnostics["n_splits"] == 6
    # the engine leaves the hold-out split active afterwards
    assert dm.active is dm.holdout


def test_one_failed_fold_fails_the_candidate():
    dm = make_dm()

    def loss(r, split):
        return math.nan if (r == 1.0 and split == "fold 1.2") else parabola(r)

    result = SearchEngine([0.25, 1.0, 2.0], folds=3, verbose=False).run(dm, FakeScorer(loss))
    bad = next(c for c in result.candidates if c.ratio == 1.0)
    assert bad.val_balanced_loss is None and bad.status.startswith("failed")
    assert bad.fold_losses[1] is None and bad.fold_losses[0] is not None
    assert result.selected_ratio == 2.0  # |2 - 1.25| < |0.25 - 1.25|


def test_balanced_data_needs_no_synthetic_rows():
    dm = make_dm(n_neg=40, n_pos=40)
    assert dm.class_gaps() == {0: 0, 1: 0}
    scorer = FakeScorer(parabola)
    result = SearchEngine(verbose=False).run(dm, scorer)
    assert scorer.calls == []
    assert result.selected_sizes == {} and result.selected_index_sizes == {}
    assert result.selected_ratio == 0.0
    assert any("no synthetic rows" in n for n in result.diagnostics["notes"])
    assert result.candidates[0].status.startswith("skipped")
    again = VTSSResult.from_dict(json.loads(result.to_json()))
    assert again.selected_sizes == {}


def test_balanced_result_can_be_written(tmp_path):
    """A balanced data set still gets a report and a curve file (callback on_fit_end)."""
    dm = make_dm(n_neg=40, n_pos=40)
    result = SearchEngine(verbose=False).run(dm, FakeScorer(parabola))
    report, curve = result.write(tmp_path)
    assert report.exists() and curve.exists()
    assert "sizes none" in result.summary()  # no crash on a candidate without a loss


# --------------------------------------------------------------------------- grid


def test_default_ratios_contain_none_balance_and_double_and_are_denser_near_one():
    grid = list(DEFAULT_RATIOS)
    assert {0.0, 1.0, 2.0} <= set(grid)
    assert grid == sorted(grid)
    assert min(grid) == 0.0 and max(grid) == 2.0
    steps = np.diff(grid)
    i = grid.index(1.0)
    assert max(steps[i - 1], steps[i]) < min(steps[0], steps[-1])
    assert sum(0.75 <= r <= 1.25 for r in grid) > sum(r < 0.75 or r > 1.25 for r in grid) - 2


def test_build_candidates_sorted_and_deduplicated():
    gaps = {0: 0, 1: 4}
    cands = build_candidates(gaps, [2.0, 0.0, 1.0, 0.9, 1.1, 1.0])
    # 0.9 * 4 = 3.6 -> 4 and 1.1 * 4 = 4.4 -> 4 duplicate ratio 1's size
    sizes = [c.sizes(gaps) for c in cands]
    assert sizes == [{1: 0}, {1: 4}, {1: 8}]
    assert len({tuple(s.items()) for s in sizes}) == len(sizes)


def test_build_candidates_multiclass_rescale():
    gaps = {0: 0, 1: 10, 2: 3}
    (cand,) = build_candidates(gaps, [0.5])
    assert cand.sizes(gaps) == {1: 5, 2: 2}  # 1.5 rounds up
    assert cand.sizes({0: 0, 1: 7, 2: 0}) == {1: 4}  # a fold's gaps


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratios": [1.0], "sizes": [{1: 3}]}, "not both"),
        ({"ratios": []}, "empty"),
        ({"sizes": []}, "empty"),
        ({"ratios": [-0.5, 1.0]}, ">= 0"),
        ({"ratios": [math.nan]}, "finite"),
        ({"ratios": [math.inf]}, "finite"),
        ({"sizes": [{0: 3}]}, "not minority"),
        ({"sizes": [{7: 3}]}, "not minority"),
        ({"sizes": [{1: -2}]}, ">= 0"),
    ],
)
def test_build_candidates_validation(kwargs, match):
    with pytest.raises(VTSSError, match=match):
        build_candidates({0: 0, 1: 10}, **kwargs)


def test_engine_rejects_bad_repeats():
    with pytest.raises(VTSSError, match="repeats"):
        SearchEngine(repeats=0)


def test_select_skips_failures_and_breaks_ties_by_size():
    a = CandidateResult(0.0, {"pos": 0}, 0.7)
    b = CandidateResult(1.0, {"pos": 10}, 0.4)
    c = CandidateResult(2.0, {"pos": 20}, 0.4)
    d = CandidateResult(3.0, {"pos": 30}, None, status="failed: non-finite validation loss")
    assert select([d, c, b, a]) is b
    with pytest.raises(VTSSError):
        select([d])


# --------------------------------------------------------------------------- report


def test_result_json_round_trip_and_report_keys(tmp_path):
    dm = make_dm()
    result = SearchEngine([0, 0.5, 1, 2], folds=3, verbose=False).run(dm, FakeScorer(parabola))
    result.test_metrics = {"balanced_log_loss": 0.4, "balanced_accuracy": 0.8, "auprc": 0.6}
    result.config = {"strategy": "retrain", "ratios": [0, 0.5, 1, 2]}
    data = json.loads(result.to_json())
    for key in (
        "selected_ratio",
        "selected_sizes",
        "candidates",
        "test_metrics",
        "diagnostics",
        "timing",
        "config",
    ):
        assert key in data, key
    assert data["selected_ratio"] == 1.0
    assert data["selected_sizes"] == {"pos": 60}
    for cand in data["candidates"]:
        assert {"ratio", "sizes", "val_balanced_loss"} <= set(cand)
    assert [c["ratio"] for c in data["candidates"]] == [0.0, 0.5, 1.0, 2.0]
    assert "search_seconds" in data["timing"]
    assert data["diagnostics"]["class_counts_train"] == {"neg": 80, "pos": 20}
    assert data["diagnostics"]["gaps"] == {"pos": 60}

    again = VTSSResult.from_dict(data)
    assert again.to_dict() == result.to_dict()
    assert again.selected_index_sizes == result.selected_index_sizes == {1: 60}
    assert again.selected.ratio == 1.0

    path = tmp_path / "r.json"
    result.to_json(path)
    assert json.loads(path.read_text()) == data

    report, curve = result.write(tmp_path / "out")
    assert report.name == "vtss_report.json" and curve.name == "vtss_curve.png"
    assert curve.stat().st_size > 1000
    assert json.loads(report.read_text()) == data


def test_result_json_has_no_nan():
    dm = make_dm()
    scorer = FakeScorer(lambda r, s: math.nan if r == 2 else parabola(r))
    result = SearchEngine([0, 1, 2], verbose=False).run(dm, scorer)
    result.test_metrics = {"auprc": math.nan}
    text = result.to_json()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["test_metrics"]["auprc"] is None


def test_search_shows_each_fold_and_generator_fit_as_it_happens(capsys):
    dm = make_dm()
    SearchEngine([0, 1, 2], folds=3, verbose=True).run(dm, FakeScorer(parabola), bar=True)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    folds = [i for i, line in enumerate(lines) if "best ratio here" in line]
    fitted = [i for i, line in enumerate(lines) if line.startswith("VTSS: fitted the generator")]
    means = [i for i, line in enumerate(lines) if line.startswith("VTSS [")]
    assert len(folds) == 3 and len(fitted) == 3 and len(means) == 3
    assert fitted[0] < folds[0] < fitted[1] < folds[1] < fitted[2] < folds[2] < means[0]
    assert "class 'pos'" in lines[fitted[0]]  # the label as written, not np.str_('pos')
    assert "VTSS search" in err and "9/9" in err  # the live bar over the 3 x 3 fits


def test_quiet_search_prints_nothing(capsys):
    SearchEngine([0, 1], verbose=False).run(make_dm(), FakeScorer(parabola), bar=True)
    out, err = capsys.readouterr()
    assert out == "" and "VTSS" not in err


# ------------------------------------------------------------- validation from the data
def test_auto_validation_uses_k_fold_when_the_hold_out_is_small():
    from vtss_lightning.search import SearchConfig

    dm = make_dm()  # 25 minority rows: 5 in the 20% hold-out's validation part
    result = SearchEngine(SearchConfig(ratios=(0, 1), folds="auto", verbose=False)).run(
        dm, FakeScorer(parabola)
    )
    assert result.diagnostics["validation"] == "4x5-fold"  # ceil(100 / 25) repeats
    assert "only 5 validation rows" in result.diagnostics["validation_reason"]
    assert len(result.candidates[0].fold_losses) == 20


def test_auto_validation_keeps_the_hold_out_when_every_class_has_plenty():
    from vtss_lightning.search import SearchConfig

    dm = make_dm(n_neg=1500, n_pos=600)
    result = SearchEngine(SearchConfig(ratios=(0, 1), folds="auto", verbose=False)).run(
        dm, FakeScorer(parabola)
    )
    assert result.diagnostics["validation"] == "holdout"
    assert ">= 100 validation rows" in result.diagnostics["validation_reason"]


# ---------------------------------------------------------------- paired selection
def _fold_offsets(split_name: str) -> float:
    """Split-to-split noise shared by every candidate (it cancels in paired differences)."""
    return (hash(split_name) % 7) * 0.05


def test_paired_se_leaves_full_balance_only_on_paired_evidence():
    from vtss_lightning.search import SearchConfig

    dm = make_dm()
    config = SearchConfig(
        ratios=(0, 1, 2), folds=3, repeats=2, selection="paired_se", verbose=False
    )
    # ratio 2 is better than balance by 0.01 on every split, under large shared noise
    steady = FakeScorer(lambda r, s: _fold_offsets(s) + (0.5 if r < 1.5 else 0.49) + (r == 0))
    assert SearchEngine(config).run(dm, steady).selected_ratio == 2.0
    # ratio 2 is better on average only because of one split: stay at full balance
    noisy = FakeScorer(
        lambda r, s: 0.5 + (r == 0) - (0.2 if (r > 1.5 and s == "fold 1.1") else 0.0)
    )
    result = SearchEngine(config).run(dm, noisy)
    assert result.selected_ratio == 1.0
    plain = SearchEngine(SearchConfig(ratios=(0, 1, 2), folds=3, repeats=2, verbose=False))
    assert plain.run(dm, noisy).selected_ratio == 2.0  # "min" follows the lucky split


# ------------------------------------------------------------------ the grid follows the curve
def test_the_grid_extends_while_the_largest_size_wins():
    dm = make_dm()
    result = SearchEngine(verbose=False).run(dm, FakeScorer(lambda r, s: -r))  # default grid
    assert [c.ratio for c in result.candidates] == [*DEFAULT_RATIOS, 4.0]  # capped at 4x
    assert result.selected_ratio == 4.0
    assert result.diagnostics["grid_extended_to"] == [4.0]
    assert result.pool_index_sizes == result.selected_index_sizes  # the pool grew with it
    assert "extended to 4" in result.summary()


def test_no_extension_when_an_inner_size_wins_and_a_flat_curve_is_named():
    dm = make_dm()
    result = SearchEngine(verbose=False).run(dm, FakeScorer(parabola))
    assert "grid_extended_to" not in result.diagnostics
    given = SearchEngine([0, 1, 2], verbose=False).run(dm, FakeScorer(lambda r, s: -r))
    assert [c.ratio for c in given.candidates] == [0.0, 1.0, 2.0]  # explicit grids as given
    flat = SearchEngine([0, 1, 2], verbose=False).run(dm, FakeScorer(lambda r, s: 0.5 + r * 1e-4))
    assert flat.diagnostics["curve"].startswith("flat")
    off = SearchEngine(extend_grid=False, verbose=False).run(dm, FakeScorer(lambda r, s: -r))
    assert [c.ratio for c in off.candidates] == list(DEFAULT_RATIOS)


def test_kept_weights_survive_entering_the_same_split_again_not_another():
    """A grid extension enters the hold-out again: the winner trained before it must
    still be handed over; a fold's weights must not leak into the next split."""
    from vtss_lightning.models import TabularClassifier
    from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings

    dm = tabular_dm(80, 16, setup=True)
    scorer = RetrainScorer(
        TabularClassifier(), TrainerSettings.from_kwargs({"max_epochs": 1}), keep_states=True
    )
    scorer.begin_split(dm)
    scorer.score(dm, {1: 8})
    scorer.begin_split(dm)  # the hold-out again
    assert scorer.trained_state({1: 8}) is not None
    (name, train, val), *_ = dm.fold_indices(2)
    with dm.use_split(name, train, val):
        scorer.begin_split(dm)
        assert scorer.trained_state({1: 8}) is None
