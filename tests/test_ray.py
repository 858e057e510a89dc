"""strategy="ray": the search's jobs as the trials of one Ray Tune run (loopback only).

The engine's two-phase call (``scores_across_splits``) is tested first with a fake
scorer, without Ray; the rest needs Ray (``pip install "vtss-lightning[ray]"``) and
starts a local instance of two CPUs on 127.0.0.1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import small_mlp
from test_search import FakeScorer, make_dm, parabola

from vtss_lightning import TabularDataModule
from vtss_lightning.search import SearchEngine
from vtss_lightning.search.scores import MemoryStore
from vtss_lightning.search.strategies import ParallelScorer, RetrainScorer, TrainerSettings
from vtss_lightning.search.strategies.ray import RayScorer

pytestmark = pytest.mark.filterwarnings("ignore")
SETTINGS = TrainerSettings.from_kwargs({"max_epochs": 3, "accelerator": "cpu"})


# ------------------------------------------------------- the engine's two-phase call
class StagedFake(FakeScorer):
    """FakeScorer through the two-phase call: scored while staged, yielded at the end
    in reverse order (any order must do)."""

    scores_across_splits = True

    def __init__(self, loss_of_ratio):
        super().__init__(loss_of_ratio)
        self.staged, self.runs = [], 0
        self._done = []

    def stage(self, dm, split, jobs):
        self.staged.append((split, [i for i, _ in jobs]))
        self._done += [(split, i, self.score(dm, sizes), 0.1) for i, sizes in jobs]

    def run_staged(self, verbose=False):
        self.runs += 1
        done, self._done = self._done, []
        yield from reversed(done)


def test_a_staged_scorer_gets_every_split_at_once_and_the_same_report(capsys):
    dm = make_dm()
    curve = lambda r, s: -r + 0.01 * len(s)  # noqa: E731 - the largest wins: the grid extends
    want = SearchEngine(folds=3).run(dm, FakeScorer(curve))
    lines_want = capsys.readouterr().out
    staged = StagedFake(curve)
    got = SearchEngine(folds=3).run(dm, staged)
    lines_got = capsys.readouterr().out
    assert staged.runs == 2  # the grid and its extension round
    assert [s for s, _ in staged.staged] == [0, 1, 2, 0, 1, 2]
    assert [c.fold_losses for c in got.candidates] == [c.fold_losses for c in want.candidates]
    assert got.selected_ratio == want.selected_ratio and got.diagnostics["grid_extended_to"]
    for fold in ("1.1", "1.2", "1.3"):  # a split's line once its last job is in, each round
        assert lines_got.count(f"VTSS fold {fold}: best ratio") == 2
        assert lines_got.count(f"fold {fold}: best ratio") == lines_want.count(
            f"fold {fold}: best ratio"
        )


def test_a_staged_scorer_resumes_from_the_stores_finished_scores():
    dm = make_dm()
    store = MemoryStore()
    want = SearchEngine([0, 1, 2], folds=3, verbose=False).run(dm, FakeScorer(parabola), store)
    for key in [(1, 0), (2, 0), (2, 2)]:
        del store.scores[key]
    staged = StagedFake(parabola)
    got = SearchEngine([0, 1, 2], folds=3, verbose=False).run(dm, staged, store)
    assert staged.staged == [(1, [0]), (2, [0, 2])]
    assert [c.fold_losses for c in got.candidates] == [c.fold_losses for c in want.candidates]


# ---------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason='Ray is optional: pip install "vtss-lightning[ray]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


def imbalanced_dm(n_features: int = 3) -> TabularDataModule:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, n_features))
    x[120:] += 1.0
    y = np.array(["neg"] * 120 + ["pos"] * 30)
    dm = TabularDataModule.from_arrays(x, y, batch_size=64)
    dm.setup()
    return dm


@pytest.fixture
def counted_fits(local_ray, monkeypatch):
    """How many times ``Tuner.fit`` ran (one Tune run per search)."""
    from ray import tune

    calls, fit = [], tune.Tuner.fit

    def counting(self):
        calls.append(1)
        return fit(self)

    monkeypatch.setattr(tune.Tuner, "fit", counting)
    return calls


def test_one_tune_run_of_retrain_fits_gives_retrains_fold_losses(counted_fits):
    dm = imbalanced_dm()
    model = small_mlp(dm)
    want = SearchEngine([0, 1, 2], folds=3, verbose=False).run(dm, RetrainScorer(model, SETTINGS))
    scorer = RayScorer(model, SETTINGS, stack_size=1)  # one candidate per trial
    got = SearchEngine([0, 1, 2], folds=3, verbose=False).run(dm, scorer)
    assert len(counted_fits) == 1 and scorer.tune_runs == 1  # nine trials, one run
    assert got.selected_ratio == want.selected_ratio
    for c, w in zip(got.candidates, want.candidates, strict=True):
        assert c.status == "ok"
        assert c.fold_losses == pytest.approx(w.fold_losses, abs=1e-6)


def test_stacked_trials_give_the_parallel_losses_quietly(counted_fits, capsys):
    dm = imbalanced_dm()
    model = small_mlp(dm)
    want = SearchEngine([0, 1, 2], folds=3, verbose=False).run(dm, ParallelScorer(model, SETTINGS))
    scorer = RayScorer(model, SETTINGS, stacker=ParallelScorer)
    got = SearchEngine([0, 1, 2], folds=3).run(dm, scorer)
    out, err = capsys.readouterr()
    assert len(counted_fits) == 1 and scorer.fallback_reason is None
    # one trial per split: two CPUs, three splits
    assert "9 fits as 3 trials of one Tune run (stacks of up to 3 of one" in out
    for noise in ("View detailed results", "tensorboard", "Configuration for", "vtss_ray_"):
        assert noise not in out + err  # nor any path of the removed results folder
    assert got.selected_ratio == want.selected_ratio
    for c, w in zip(got.candidates, want.candidates, strict=True):
        assert c.fold_losses == pytest.approx(w.fold_losses, abs=1e-6)


def test_narrower_stacks_give_the_same_losses_and_the_winner_weights(local_ray):
    dm = imbalanced_dm()
    model = small_mlp(dm)
    # stacks of 2 and 1
    scorer = RayScorer(model, SETTINGS, keep_states=True, stack_size=2, stacker=ParallelScorer)
    result = SearchEngine(ratios=[0, 1, 2], verbose=False).run(dm, scorer)
    local = SearchEngine(ratios=[0, 1, 2], verbose=False).run(dm, ParallelScorer(model, SETTINGS))
    got = [c.val_balanced_loss for c in result.candidates]
    assert all(math.isfinite(v) for v in got)
    assert got == pytest.approx([c.val_balanced_loss for c in local.candidates], abs=1e-6)
    assert result.selected_ratio == local.selected_ratio
    state = scorer.trained_state(result.selected_index_sizes)
    assert state is not None and set(state) == set(model.state_dict())
    assert result.diagnostics.get("comparators")  # the no-synthetic fit's logit adjustment


def test_a_failing_trial_is_its_candidates_status_and_leaves_nothing_behind(
    local_ray, tmp_path, monkeypatch, capsys
):
    from vtss_lightning.models import TabularClassifier

    dm = imbalanced_dm()
    real_rows = len(dm.active.y_train)

    class FailsWithSyntheticRows(TabularClassifier):  # local: travels to the worker by value
        def training_step(self, batch, batch_idx):
            if len(batch[1]) > real_rows:
                raise ValueError("boom: too many rows for this trial")
            return super().training_step(batch, batch_idx)

    torch.manual_seed(0)
    model = FailsWithSyntheticRows()  # full-batch L-BFGS: a batch is all training rows
    model.configure_from_data(dm)
    results = Path.home() / "ray_results"
    had_results = results.exists()
    monkeypatch.chdir(tmp_path)
    scorer = RayScorer(model, TrainerSettings.from_kwargs({"max_epochs": 1}), stack_size=1)
    result = SearchEngine(ratios=[0, 1, 2], verbose=False).run(dm, scorer)
    assert capsys.readouterr().out == ""  # verbose=False: Tune is silent too
    assert list(tmp_path.iterdir()) == []  # nothing in the working directory
    assert results.exists() == had_results
    ok, *failed = result.candidates
    assert ok.status == "ok" and result.selected_ratio == 0
    for c in failed:
        assert c.val_balanced_loss is None
        assert c.status.startswith("failed: Ray trial error")
        assert "boom: too many rows for this trial" in c.status


def test_ray_options_reach_the_scorer_and_are_checked_in_one_line():
    from vtss_lightning.errors import VTSSError
    from vtss_lightning.models import TabularClassifier
    from vtss_lightning.search import SearchConfig
    from vtss_lightning.search.strategies import make_scorer

    options = {"resources": {"cpu": 2}, "max_concurrent": 3, "stack_size": 1}
    config = SearchConfig(strategy="ray", ray_options=options)
    scorer = make_scorer(config, TabularClassifier(), TrainerSettings.from_kwargs({}))
    assert (scorer.resources, scorer.max_concurrent, scorer.stack_size) == ({"cpu": 2}, 3, 1)
    assert "ray_options" not in config.scoring_settings()  # the layout changes no score
    for bad, message in [
        ({"strategy": "parallel", "ray_options": {"stack_size": 2}}, "strategy='ray' only"),
        ({"strategy": "ray", "ray_options": {"stacks": 2}}, r"unknown ray_options \['stacks'\]"),
        ({"strategy": "ray", "ray_options": {"stack_size": 0}}, "stack_size must be an integer"),
        ({"strategy": "ray", "ray_options": {"resources": {"gpu": -1}}}, "amounts >= 0"),
    ]:
        with pytest.raises(VTSSError, match=message):
            SearchConfig(**bad)
