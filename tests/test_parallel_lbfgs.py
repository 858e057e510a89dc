"""strategy="parallel" for full-batch L-BFGS models: all candidates solved as one problem.

The reference is retrain: every member of the joint solve must end where retrain's own
L-BFGS fit of that candidate ends, up to retrain's float32 precision (retrain stops at
largest gradient entries of 1e-6 to 1e-5, the joint float64 solve at 1e-7): balanced
validation loss within 1e-4 and weights within 1e-3, member by member.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import LinearModule, tabular_dm

from vtss_lightning import TabularDataModule, VTSSTuner
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search import SearchEngine
from vtss_lightning.search.scores import score_jobs
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings, _full_batch
from vtss_lightning.search.strategies._full_batch import JointObjective, shared_rows
from vtss_lightning.search.strategies._stack import (
    MemberState,
    initial_state,
    optimizer_spec,
    without_metrics,
)
from vtss_lightning.search.strategies.parallel import ParallelScorer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU

ONE_EPOCH = TrainerSettings.from_kwargs({"max_epochs": 1, "accelerator": "cpu"})
LOSS_TOL, WEIGHT_TOL = 1e-4, 1e-3

#: 160 "a" vs 40 "b" rows, 4 features all shifted by 1.0 (overlapping classes); set up.
binary_dm = partial(tabular_dm, n_neg=160, n_pos=40, n_features=4, labels=("a", "b"), setup=True)


def three_class_dm(seed: int = 0) -> TabularDataModule:
    """200 / 70 / 30 rows of three overlapping Gaussian classes (two minorities); set up."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 5))
    x[200:270, :2] += 1.0
    x[270:, 2:] += 1.5
    y = np.array(["a"] * 200 + ["b"] * 70 + ["c"] * 30)
    dm = TabularDataModule.from_arrays(x, y, seed=seed)
    dm.setup()
    return dm


def jobs_for(dm, ratios=(0, 0.5, 1, 2)):
    gaps = dm.class_gaps()
    dm.prepare_pool({k: int(max(ratios) * g) for k, g in gaps.items() if g})
    return [(i, {k: int(r * g) for k, g in gaps.items() if g}) for i, r in enumerate(ratios)]


def built(model, dm):
    torch.manual_seed(0)
    model.configure_from_data(dm)
    return model


def both(model, dm, jobs, settings=ONE_EPOCH, **kw):
    """Retrain and parallel scorers run on ``jobs``: ``(retrain, parallel, losses, losses)``."""
    retrain = RetrainScorer(model, settings, keep_states=True)
    want = {i: loss for i, loss, _ in score_jobs(retrain, dm, jobs)}
    parallel = ParallelScorer(model, settings, keep_states=True, verbose=False, **kw)
    got = {i: loss for i, loss, _ in score_jobs(parallel, dm, jobs)}
    return retrain, parallel, want, got


def weight_gap(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())


def gradient_at(scorer, dm, sizes, state) -> float:
    """Largest gradient entry (float64) of the candidate's objective at ``state``."""
    names = dict(scorer._base.named_parameters())
    params = {k: v for k, v in state.items() if k in names}
    buffers = {k: v for k, v in state.items() if k in dict(scorer._base.named_buffers())}
    x, y = dm.training_tensors(sizes)
    one = JointObjective(scorer._base, [MemberState(params, buffers)], [(x, y)], False, "separate")
    return float(one.gradient_max()[0])


def assert_members_match(retrain, parallel, want, got, jobs, weights=True, weight_tol=WEIGHT_TOL):
    """Per member: retrain's loss and weights, and at least retrain's convergence."""
    assert parallel.fallback_reason is None
    assert parallel._joint is not None  # solved jointly, not stacked step by step
    for i, sizes in jobs:
        assert got[i] == pytest.approx(want[i], abs=LOSS_TOL), i
        ours, theirs = parallel.trained_state(sizes), retrain.trained_state(sizes)
        if weights:
            assert weight_gap(theirs, ours) < weight_tol, (i, weight_gap(theirs, ours))
            mine, ref = (gradient_at(parallel, parallel._dm, sizes, s) for s in (ours, theirs))
            assert mine < max(ref, 2e-7), (i, mine, ref)


# ------------------------------------------------------------------ agreement
@pytest.mark.parametrize("make", [binary_dm, three_class_dm], ids=["binary", "three_classes"])
def test_each_member_ends_at_retrains_optimum(make):
    dm = make()
    model = built(TabularClassifier(), dm)  # weight_decay="auto": L2 1/n, strictly convex
    jobs = jobs_for(dm)
    retrain, parallel, want, got = both(model, dm, jobs)
    assert len(set(np.round(list(want.values()), 4))) == len(jobs)  # sizes matter
    assert_members_match(retrain, parallel, want, got, jobs)
    assert parallel.statuses == {}  # every member converged in the joint solve
    assert parallel._joint.mode == "shared" and parallel._joint.stacked_penalty


@pytest.mark.parametrize(
    ("kw", "weight_tol"),
    [
        ({"loss": "mse", "fit_intercept": False}, WEIGHT_TOL),
        ({"class_weight": "balanced"}, WEIGHT_TOL),
        # retrain's float32 fit stops at largest gradient entries of ~1e-5 here, 1.4e-3
        # from the optimum in the flattest direction; the joint solve is at ~1e-8
        ({"random_features": 12}, 3e-3),
        ({"weight_decay": 1e-2}, WEIGHT_TOL),
    ],
    ids=["least_squares", "class_weighted", "random_features", "fixed_l2"],
)
def test_other_convex_heads_match_retrain_too(kw, weight_tol):
    dm = binary_dm()
    model = built(TabularClassifier(**kw), dm)
    jobs = jobs_for(dm, (0, 1, 2))
    assert_members_match(*both(model, dm, jobs), jobs, weight_tol=weight_tol)


def test_without_a_penalty_on_overlapping_classes_the_optimum_is_unique_and_matched():
    dm = binary_dm()
    model = built(TabularClassifier(weight_decay=0.0), dm)
    jobs = jobs_for(dm, (0, 1, 2))
    assert_members_match(*both(model, dm, jobs), jobs)


def test_without_a_penalty_on_separable_classes_only_the_losses_compare():
    """No minimiser exists (the logits grow without bound): retrain and the joint solve
    both stop on a small gradient somewhere along the same ray, so their weights differ
    (by several units here); the balanced losses, both near 0, agree."""
    dm = binary_dm(shift=6.0)
    model = built(TabularClassifier(weight_decay=0.0), dm)
    jobs = jobs_for(dm, (0, 1, 2))
    retrain, parallel, want, got = both(model, dm, jobs)
    assert_members_match(retrain, parallel, want, got, jobs, weights=False)
    assert all(v < 1e-3 for v in got.values())


def test_several_epochs_and_a_best_snapshot():
    dm = binary_dm()
    model = built(TabularClassifier(), dm)
    jobs = jobs_for(dm, (0, 1, 2))
    three = TrainerSettings.from_kwargs({"max_epochs": 3, "accelerator": "cpu"})
    assert_members_match(*both(model, dm, jobs, three), jobs)
    best = ParallelScorer(model, three, snapshot="best", verbose=False)
    last = ParallelScorer(model, three, verbose=False)
    a = [loss for _, loss, _ in score_jobs(best, dm, jobs)]
    b = [loss for _, loss, _ in score_jobs(last, dm, jobs)]
    assert all(x <= y + 1e-9 for x, y in zip(a, b, strict=True))


def test_members_do_not_depend_on_their_stack_mates():
    """A tiny memory budget solves each member alone: the same optimum, within the solve's
    own tolerance (far below the retrain tolerance)."""
    dm = binary_dm()
    model = built(TabularClassifier(), dm)
    jobs = jobs_for(dm)
    whole = ParallelScorer(model, ONE_EPOCH, verbose=False)
    a = {i: loss for i, loss, _ in score_jobs(whole, dm, jobs)}
    alone = ParallelScorer(model, ONE_EPOCH, memory_budget_mb=1e-6, verbose=False)
    b = {i: loss for i, loss, _ in score_jobs(alone, dm, jobs)}
    assert whole.chunk_size == len(jobs) and alone.chunk_size == 1
    assert b == pytest.approx(a, abs=1e-5)


# ------------------------------------------------------------- the search end to end
@pytest.mark.parametrize("folds", [None, 3])
def test_the_search_selects_retrains_ratio_with_no_fallback_note(folds):
    dm = binary_dm(n_neg=240, n_pos=30, seed=1)
    runs = {}
    for strategy in ("retrain", "parallel"):
        tuner = VTSSTuner(
            {"max_epochs": 1, "accelerator": "cpu"},
            ratios=[0, 0.5, 1, 2],
            folds=folds,
            strategy=strategy,
            verbose=False,
        )
        runs[strategy] = tuner.search(TabularClassifier(), dm, progress_bar=False)
    retrain, parallel = runs["retrain"], runs["parallel"]
    assert parallel.selected_ratio == retrain.selected_ratio
    assert not any("one candidate at a time" in n for n in parallel.diagnostics.get("notes", []))
    for a, b in zip(retrain.candidates, parallel.candidates, strict=True):
        assert b.val_balanced_loss == pytest.approx(a.val_balanced_loss, abs=LOSS_TOL)
        assert b.status == "ok"


def test_the_winner_loads_into_a_fresh_model():
    dm = binary_dm()
    model = built(TabularClassifier(), dm)
    jobs = jobs_for(dm, (0, 1))
    parallel = ParallelScorer(model, ONE_EPOCH, keep_states=True, verbose=False)
    losses = {i: loss for i, loss, _ in score_jobs(parallel, dm, jobs)}
    fresh = TabularClassifier(n_features=dm.n_features, num_classes=dm.num_classes)
    fresh.load_state_dict(parallel.trained_state(jobs[1][1]), strict=True)
    split = dm.active
    rows = fresh.per_sample_loss(fresh(split.x_val), split.y_val).detach()
    balanced = np.mean([float(rows[split.y_val == c].mean()) for c in (0, 1)])
    assert balanced == pytest.approx(losses[1], abs=1e-6)
    assert dm.active.name in parallel.comparators  # the no-synthetic fit's logit adjustment


# ------------------------------------------------ what is retrained or falls back
def test_a_truncated_lbfgs_budget_retrains_the_unconverged_members_exactly():
    """max_iter=3: retrain stops far from the optimum, so does the joint solve; the
    members it leaves unconverged are retrained alone, with the reason as their status."""
    dm = binary_dm()
    model = built(TabularClassifier(max_iter=3), dm)
    jobs = jobs_for(dm, (0, 1))
    retrain, parallel, want, got = both(model, dm, jobs)
    assert parallel.fallback_reason is None
    assert set(parallel.statuses) == {0, 1}
    assert all(s.startswith("trained alone (retrain recipe)") for s in parallel.statuses.values())
    assert got == pytest.approx(want, abs=1e-7)
    for _, sizes in jobs:
        assert weight_gap(retrain.trained_state(sizes), parallel.trained_state(sizes)) < 1e-6


def test_hidden_layers_with_lbfgs_fall_back_to_retrain_with_the_reason(capsys):
    dm = binary_dm()
    model = built(TabularClassifier(hidden_dims=[4], max_iter=20), dm)
    jobs = jobs_for(dm, (0, 1))
    parallel = ParallelScorer(model, ONE_EPOCH)
    losses = [loss for _, loss, _ in score_jobs(parallel, dm, jobs)]
    assert "not convex in its parameters" in parallel.fallback_reason
    assert "\n" not in parallel.fallback_reason
    assert all(math.isfinite(v) for v in losses)
    assert "training one candidate at a time" in capsys.readouterr().out


def test_mini_batch_lbfgs_still_falls_back():
    class MiniBatch(TabularClassifier):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.full_batch = False

    dm = binary_dm()
    scorer = ParallelScorer(built(MiniBatch(), dm), ONE_EPOCH, verbose=False)
    assert not scorer.prepare(dm)
    assert "LBFGS on mini-batches" in scorer.fallback_reason


# ------------------------------------------------------- a user's own module
class UserLogistic(LinearModule):
    """A user's full-batch L-BFGS logistic regression, declared convex: no
    ``forward_stacked`` or ``penalty_stacked``, so the joint solve vmaps ``forward``
    and calls ``penalty`` once per member."""

    full_batch = True
    convex_objective = True

    def per_sample_loss(self, scores, y):
        return F.cross_entropy(scores, y, reduction="none")

    def penalty(self, n_rows: int):
        return 0.5 / n_rows * self.layer.weight.pow(2).sum()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.per_sample_loss(self(x), y).mean() + self.penalty(len(y))

    def configure_optimizers(self):
        return torch.optim.LBFGS(
            self.parameters(), max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-9
        )


class UserLossOnly(UserLogistic):
    """Only ``loss(scores, y)`` (no per-row losses): each member's loss on its own rows."""

    per_sample_loss = None

    def loss(self, scores, y):
        return F.cross_entropy(scores, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss(self(x), y) + self.penalty(len(y))


@pytest.mark.parametrize(("cls", "mode"), [(UserLogistic, "shared"), (UserLossOnly, "separate")])
def test_a_users_convex_lbfgs_module_is_solved_jointly(cls, mode):
    dm = binary_dm()
    torch.manual_seed(0)
    model = cls(dm.n_features, dm.num_classes)
    jobs = jobs_for(dm, (0, 1, 2))
    retrain, parallel, want, got = both(model, dm, jobs)
    assert_members_match(retrain, parallel, want, got, jobs)
    assert parallel._joint.mode == mode and not parallel._joint.stacked_penalty


# ----------------------------------------------------------- the joint objective
def test_the_joint_objective_is_each_members_training_step_objective():
    """Shared, padded and separate layouts all give ``loss(own rows) + penalty(n_k)``."""
    dm = three_class_dm()
    model = without_metrics(built(TabularClassifier(class_weight="balanced"), dm))
    jobs = jobs_for(dm, (0, 0.5, 2))
    data = [dm.training_tensors(sizes) for _, sizes in jobs]
    ref = copy.deepcopy(model).double()
    want = [float(ref.loss(ref(x.double()), y) + ref.penalty(len(y))) for x, y in data]
    state = initial_state(model, torch.device("cpu"))
    n_real = len(dm.active.y_train)
    assert shared_rows(data, n_real) is not None
    for mode in ("shared", "padded", "separate"):
        for stacked in (True, False):
            obj = JointObjective(model, [state] * 3, data, True, mode, n_real, stacked)
            assert obj.mode == mode
            assert obj.losses().detach().tolist() == pytest.approx(want, rel=1e-10), mode
    # rows that are not part of the largest candidate's: padded instead of shared
    swapped = [data[0], (data[1][0].flip(0), data[1][1].flip(0))]
    assert shared_rows(swapped, n_real) is None
    assert JointObjective(model, [state] * 2, swapped, True, "shared", n_real).mode == "padded"


def test_search_engine_runs_the_joint_solve_on_k_folds():
    dm = binary_dm()
    model = built(TabularClassifier(), dm)
    engine = SearchEngine(ratios=[0, 1, 2], folds=3, verbose=False)
    retrain = engine.run(dm, RetrainScorer(model, ONE_EPOCH))
    parallel = engine.run(dm, ParallelScorer(model, ONE_EPOCH, verbose=False))
    assert parallel.selected_ratio == retrain.selected_ratio
    for a, b in zip(retrain.candidates, parallel.candidates, strict=True):
        assert b.fold_losses == pytest.approx(a.fold_losses, abs=LOSS_TOL)


# ------------------------------------------------------------------ batched Newton
@pytest.fixture
def solvers(monkeypatch):
    """What each joint solve ran (``JointObjective.solver``), in call order."""
    seen: list[str] = []
    solve = _full_batch.solve

    def spy(objective, *args, **kwargs):
        out = solve(objective, *args, **kwargs)
        seen.append(objective.solver)
        return out

    monkeypatch.setattr(_full_batch, "solve", spy)
    return seen


@pytest.mark.parametrize(
    ("make", "kw"),
    [
        (three_class_dm, {}),
        (three_class_dm, {"class_weight": "balanced"}),
        (binary_dm, {"class_weight": 3.0}),
        (partial(binary_dm, shift=6.0), {}),  # separable: the L2 penalty keeps it finite
    ],
    ids=["three_classes", "three_classes_weighted", "binary_weighted", "separable_l2"],
)
def test_newton_members_match_retrain(make, kw, solvers):
    dm = make()
    model = built(TabularClassifier(**kw), dm)
    jobs = jobs_for(dm)
    retrain, parallel, want, got = both(model, dm, jobs)
    assert_members_match(retrain, parallel, want, got, jobs)
    assert solvers == ["newton"] and parallel.statuses == {}
    for _, sizes in jobs:
        assert all(torch.isfinite(v).all() for v in parallel.trained_state(sizes).values())


def newton_and_lbfgs(model, dm, jobs):
    """The same members solved by Newton and by the joint L-BFGS: two weight lists."""
    base = without_metrics(model)
    data = [dm.training_tensors(sizes) for _, sizes in jobs]
    state = initial_state(base, torch.device("cpu"))
    spec = optimizer_spec(base, also=(torch.optim.LBFGS,))
    out = []
    for use in (True, False):
        objective = JointObjective(base, [state] * len(jobs), data, True, "shared", len(data[0][1]))
        _full_batch.USE_NEWTON = use
        try:
            _, grads = _full_batch.solve(objective, spec, 1)
        finally:
            _full_batch.USE_NEWTON = True
        assert objective.solver == ("newton" if use else "lbfgs")
        assert bool((grads <= _full_batch.CONVERGED_GRAD).all())
        out.append(objective.states())
    return out


@pytest.mark.parametrize("kw", [{}, {"loss": "mse"}, {"random_features": 8}])
def test_newton_and_the_joint_lbfgs_reach_the_same_optimum(kw):
    """Both float64 solves stop at largest gradient entries of 1e-7 (up to ~2e-5 from the
    optimum along the flattest direction here): ten times closer to each other than the
    retrain tolerance."""
    dm = three_class_dm()
    model = built(TabularClassifier(**kw), dm)
    newton, lbfgs = newton_and_lbfgs(model, dm, jobs_for(dm))
    for a, b in zip(newton, lbfgs, strict=True):
        assert weight_gap(a.params, b.params) < WEIGHT_TOL / 10


def test_unqualified_modules_keep_the_joint_lbfgs(solvers, monkeypatch):
    """A user's module (not a TabularClassifier), a budget retrain cannot converge in,
    and Newton switched off all take the L-BFGS path."""
    dm = binary_dm()
    jobs = jobs_for(dm, (0, 1))
    torch.manual_seed(0)
    both(UserLogistic(dm.n_features, dm.num_classes), dm, jobs)
    both(built(TabularClassifier(max_iter=3), dm), dm, jobs)
    assert solvers == ["lbfgs", "lbfgs"]
    solvers.clear()
    monkeypatch.setattr(_full_batch, "USE_NEWTON", False)
    assert_members_match(*both(built(TabularClassifier(), dm), dm, jobs), jobs)
    assert solvers == ["lbfgs"]


class SquaredHingeClassifier(TabularClassifier):
    """Redefines the per-row loss: Newton's derivatives must come from autograd."""

    def per_sample_loss(self, scores, y):
        margin = 1 - (2 * y.to(scores.dtype) - 1) * (scores[:, 1] - scores[:, 0])
        return F.relu(margin).pow(2)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("make", [binary_dm, three_class_dm], ids=["binary", "three_classes"])
def test_newtons_closed_form_derivatives_equal_autograds(make, loss, monkeypatch):
    """The log and squared losses' closed-form output derivatives give the value,
    gradient and Hessian autograd gives, member by member."""
    from vtss_lightning.search.strategies import _newton

    dm = make()
    model = built(TabularClassifier(loss=loss, class_weight="balanced"), dm)
    base = without_metrics(model)
    jobs = jobs_for(dm)
    data = [dm.training_tensors(sizes) for _, sizes in jobs]
    objective = JointObjective(
        base,
        [initial_state(base, torch.device("cpu"))] * len(jobs),
        data,
        True,
        "shared",
        len(data[0][1]),
    )
    head = _newton.newton_head(objective, optimizer_spec(base, also=(torch.optim.LBFGS,)), 1)
    assert head is not None
    theta = _newton._theta(objective, head) + 0.3 * torch.randn_like(
        _newton._theta(objective, head)
    )
    closed = _newton._derivatives(objective, head, theta)
    monkeypatch.setattr(_newton, "_closed_form", lambda *a: None)
    auto = _newton._derivatives(objective, head, theta)
    for a, b in zip(closed, auto, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_module_with_its_own_loss_gets_autograd_derivatives():
    from vtss_lightning.search.strategies import _newton

    dm = binary_dm()
    model = built(SquaredHingeClassifier(), dm)
    block = type("B", (), {})()
    assert _newton._closed_form(model, block, None, torch.zeros(1, 1, 1)) is None


@pytest.mark.parametrize("out", [1, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_the_hessian_summed_over_row_blocks_equals_one_sum(out, padded, monkeypatch):
    """A long table's Hessian is summed block by block (bounded memory): the same matrix."""
    from vtss_lightning.search.strategies import _newton

    k, n, d = 4, 50, 6
    phi = torch.randn((k, n, d) if padded else (n, d), dtype=torch.float64)
    a = torch.randn(k, n, out, out, dtype=torch.float64)
    hz = a @ a.transpose(-1, -2)  # symmetric per row, as second derivatives are
    whole = _newton._gram(hz, phi)
    monkeypatch.setattr(_newton, "GRAM_CHUNK", k * d * 7)  # blocks of 7 rows
    torch.testing.assert_close(_newton._gram(hz, phi), whole, rtol=1e-12, atol=1e-12)
    rows = "kn" if padded else "n"
    want = torch.einsum(f"knab,{rows}i,{rows}j->kaibj", hz, phi, phi)
    torch.testing.assert_close(whole, want, rtol=1e-12, atol=1e-12)
