"""Cheap searches: parallel (stacked) training, successive halving, reusing the winner."""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import LinearModule, quiet_trainer, tabular_dm
from torch import nn

from vtss_lightning import VTSSCallback
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search import SearchEngine
from vtss_lightning.search.config import SearchConfig
from vtss_lightning.search.scores import score_jobs
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings, make_scorer
from vtss_lightning.search.strategies._stack import (
    Stack,
    forward_stacked_agrees,
    initial_state,
    optimizer_spec,
    stacked_mean_loss,
)
from vtss_lightning.search.strategies.halving import HalvingScorer, rung_steps, survivors
from vtss_lightning.search.strategies.parallel import ParallelScorer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU

SETTINGS = TrainerSettings.from_kwargs({"max_epochs": 3, "accelerator": "cpu"})


#: 160 "a" vs 40 "b" rows, 4 features all shifted by 1.0, batches of 32; set up.
make_dm = partial(
    tabular_dm, n_neg=160, n_pos=40, n_features=4, labels=("a", "b"), batch_size=32, setup=True
)


def mlp(dm, dropout: float = 0.0, optimizer: str = "adamw", hidden=(8,)):
    from vtss_lightning.models import TabularClassifier

    torch.manual_seed(0)
    model = TabularClassifier(
        hidden_dims=list(hidden), optimizer=optimizer, lr=0.02, dropout=dropout, max_iter=20
    )
    model.configure_from_data(dm)
    return model


def jobs_for(dm, ratios=(0, 0.5, 1, 2)):
    gap = dm.class_gaps()[1]
    dm.prepare_pool({1: int(max(ratios) * gap)})
    return [(i, {1: int(r * gap)}) for i, r in enumerate(ratios)]


class UserModel(LinearModule):
    """A user's module with per_sample_loss and plain SGD: stackable."""

    lr = 0.1
    momentum = 0.9

    def __init__(self, n_features: int, num_classes: int):
        super().__init__(n_features, num_classes)

    def per_sample_loss(self, scores, y):
        return F.cross_entropy(scores, y, reduction="none")

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.per_sample_loss(self(x), y).mean()


class NotPure(UserModel):
    """A forward that reads a value back to Python: vmap cannot trace it."""

    def forward(self, x):
        if float(x.sum()) > 1e9:
            return self.layer(x) * 2
        return self.layer(x)


class TiedModel(UserModel):
    """Two layers sharing one weight matrix, plus a metric the forward never uses."""

    def __init__(self, n_features: int, num_classes: int):
        super().__init__(n_features, num_classes)
        from vtss_lightning.metrics import BalancedMeanLoss

        self.first = nn.Linear(n_features, n_features)
        self.second = nn.Linear(n_features, n_features)
        self.second.weight = self.first.weight
        self.val_loss = BalancedMeanLoss(num_classes)

    def forward(self, x):
        return self.layer(torch.tanh(self.second(torch.tanh(self.first(x)))))


# ------------------------------------------------------------------ parallel
def test_parallel_replays_retrain_per_candidate_without_dropout():
    dm = make_dm()
    model = mlp(dm)
    jobs = jobs_for(dm)
    retrain = RetrainScorer(model, SETTINGS, keep_states=True)
    expected = {i: loss for i, loss, _ in score_jobs(retrain, dm, jobs)}
    parallel = ParallelScorer(model, SETTINGS, snapshot="last", keep_states=True)
    got = {i: loss for i, loss, _ in score_jobs(parallel, dm, jobs)}
    assert parallel.fallback_reason is None
    assert len(set(np.round(list(expected.values()), 6))) == len(jobs)  # sizes matter
    for i, sizes in jobs:
        assert got[i] == pytest.approx(expected[i], abs=1e-5)
        a, b = retrain.trained_state(sizes), parallel.trained_state(sizes)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_tied_weights_stay_tied_in_the_stack_and_the_winner_loads_strictly():
    dm = make_dm()
    torch.manual_seed(0)
    model = TiedModel(dm.n_features, dm.num_classes)
    jobs = jobs_for(dm, (0, 2))
    retrain = RetrainScorer(model, SETTINGS, keep_states=True)
    expected = [loss for _, loss, _ in score_jobs(retrain, dm, jobs)]
    parallel = ParallelScorer(model, SETTINGS, keep_states=True)
    got = [loss for _, loss, _ in score_jobs(parallel, dm, jobs)]
    assert parallel.fallback_reason is None
    assert got == pytest.approx(expected, abs=1e-5)
    assert not any(isinstance(m, type(model.val_loss)) for m in parallel._base.modules())
    fresh = TiedModel(dm.n_features, dm.num_classes)
    fresh.load_state_dict(parallel.trained_state(jobs[1][1]), strict=True)
    assert fresh.second.weight is fresh.first.weight
    assert isinstance(model.val_loss, nn.Module)  # the user's module keeps its metric


@pytest.mark.parametrize(
    "kw",
    [
        {"hidden_dims": []},
        {"hidden_dims": [8, 4], "dropout": 0.2},
        {"hidden_dims": [6], "loss": "mse", "fit_intercept": False},
        {"hidden_dims": [5], "random_features": 7},
        {"hidden_dims": [5], "num_classes": 3},
    ],
)
def test_batched_layers_compute_what_vmap_computes(kw):
    from vtss_lightning.models import TabularClassifier

    torch.manual_seed(0)
    kw = {"n_features": 4, "num_classes": 2, "optimizer": "adamw", **kw}
    model = TabularClassifier(**kw)
    state = initial_state(model, torch.device("cpu"))
    x = torch.randn(10, 4)
    assert forward_stacked_agrees(model, state, x)
    # and one stacked step through the batched layers equals one through vmap
    spec = optimizer_spec(model)
    xs, ys = torch.randn(3, 16, 4), torch.randint(0, kw["num_classes"], (3, 16))
    model.eval()  # no dropout: both paths must then agree exactly
    stacks = [Stack(model, [state] * 3, spec, batched) for batched in (False, True)]
    for stack in stacks:
        model.train = lambda mode=True: model  # keep eval (no dropout) for this comparison
        stack.step([(None, xs, ys), ([0, 2], xs[:2, :5], ys[:2, :5])])
        del model.train
    for name, p in stacks[0].params.items():
        torch.testing.assert_close(stacks[1].params[name], p, atol=1e-6, rtol=1e-5)


def test_a_subclass_with_its_own_forward_is_not_batched_by_the_parents_layers():
    from vtss_lightning.models import TabularClassifier

    class Shifted(TabularClassifier):
        def forward(self, x):
            return super().forward(x) + 1.0

    torch.manual_seed(0)
    model = Shifted(hidden_dims=[4], optimizer="adamw", n_features=3, num_classes=2)
    assert not forward_stacked_agrees(
        model, initial_state(model, torch.device("cpu")), torch.randn(5, 3)
    )


def test_parallel_members_draw_from_their_own_training_sets():
    dm = make_dm(batch_size=16)
    scorer = ParallelScorer(mlp(dm), SETTINGS)
    jobs = jobs_for(dm, (0, 1, 2))
    assert scorer.prepare(dm)
    members = scorer.members(dm, jobs)
    n_real = len(dm.active.y_train)
    rows = [len(m.loader.y) for m in members]
    assert rows == [n_real + s[1] for _, s in jobs]
    assert [int(m.loader.y.sum()) for m in members] == [
        int(dm.active.y_train.sum()) + s[1] for _, s in jobs
    ]
    # budgets follow each set: max_epochs passes of ceil(n / batch) steps
    assert [m.budget for m in members] == [3 * math.ceil(n / 16) for n in rows]


def test_stacked_step_equals_separate_sgd_steps():
    dm = make_dm()
    model = UserModel(dm.n_features, dm.num_classes)
    spec = optimizer_spec(model)
    state = initial_state(model, torch.device("cpu"))
    stack = Stack(model, [state, state], spec)
    x, y = dm.active.x_train[:10], dm.active.y_train[:10]
    xs = torch.stack([x, dm.active.x_train[10:20]])
    ys = torch.stack([y, dm.active.y_train[10:20]])
    stack.step([(None, xs, ys)])
    for j in range(2):
        ref = UserModel(dm.n_features, dm.num_classes)
        ref.load_state_dict(model.state_dict())
        opt = ref.configure_optimizers()
        F.cross_entropy(ref(xs[j]), ys[j]).backward()
        opt.step()
        assert torch.allclose(stack.params["layer.weight"][j], ref.layer.weight, atol=1e-6)


def test_dropout_masks_differ_between_members():
    dm = make_dm()
    model = mlp(dm, dropout=0.5)
    state = initial_state(model, torch.device("cpu"))
    stack = Stack(model, [state, state], optimizer_spec(model))
    x = dm.active.x_train[:64]
    rows = stack._rows(stack.params, stack.buffers, x, dm.active.y_train[:64])
    model.train()
    rows = torch.func.vmap(
        lambda p, b: torch.func.functional_call(model, (p, b), (x,)),
        randomness="different",
    )(stack.params, stack.buffers)
    assert not torch.allclose(rows[0], rows[1])  # same weights, different masks
    losses = stack.balanced_losses(None, x, dm.active.y_train[:64], 2)
    assert torch.allclose(losses[0], losses[1])  # evaluation is deterministic


def test_unstackable_modules_fall_back_to_retrain_with_a_reason(capsys):
    dm = make_dm()
    jobs = jobs_for(dm, (0, 1))
    one_epoch = TrainerSettings.from_kwargs({"max_epochs": 1, "accelerator": "cpu"})
    lbfgs = ParallelScorer(mlp(dm, optimizer="lbfgs", hidden=(4,)), one_epoch)
    losses = [loss for _, loss, _ in score_jobs(lbfgs, dm, jobs)]
    assert "not convex in its parameters" in lbfgs.fallback_reason  # full-batch, hidden layer
    assert all(math.isfinite(v) for v in losses)
    assert "training one candidate at a time" in capsys.readouterr().out
    impure = ParallelScorer(NotPure(dm.n_features, dm.num_classes), SETTINGS, verbose=False)
    assert not impure.prepare(dm)
    assert impure.fallback_reason.startswith("cannot vmap NotPure")
    assert "\n" not in impure.fallback_reason
    clipped = TrainerSettings.from_kwargs({"max_epochs": 1, "gradient_clip_val": 1.0})
    assert "clipping" in ParallelScorer(mlp(dm), clipped, verbose=False)._blocker(dm)


def test_user_module_with_sgd_momentum_is_stacked_and_matches_retrain():
    dm = make_dm()
    torch.manual_seed(1)
    model = UserModel(dm.n_features, dm.num_classes)
    jobs = jobs_for(dm, (0, 2))
    expected = [loss for _, loss, _ in score_jobs(RetrainScorer(model, SETTINGS), dm, jobs)]
    parallel = ParallelScorer(model, SETTINGS, snapshot="last")
    got = [loss for _, loss, _ in score_jobs(parallel, dm, jobs)]
    assert parallel.fallback_reason is None
    assert got == pytest.approx(expected, abs=1e-5)


def test_chunking_under_a_tiny_memory_budget_gives_the_same_results():
    dm = make_dm()
    model = mlp(dm)
    jobs = jobs_for(dm)
    whole = ParallelScorer(model, SETTINGS)
    a = {i: loss for i, loss, _ in score_jobs(whole, dm, jobs)}
    tiny = ParallelScorer(model, SETTINGS, memory_budget_mb=1e-3)
    b = {i: loss for i, loss, _ in score_jobs(tiny, dm, jobs)}
    assert whole.chunk_size == len(jobs) and tiny.chunk_size == 1
    assert b == pytest.approx(a, abs=1e-5)


def _oom_above(monkeypatch, members: int) -> None:
    """Make every stacked step of more than ``members`` members run out of memory."""
    step = Stack.step

    def limited(self, groups):
        if self.size > members:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step(self, groups)

    monkeypatch.setattr(Stack, "step", limited)


@pytest.mark.parametrize("halving", [False, True])
def test_a_stack_out_of_memory_is_split_and_gives_the_same_results(monkeypatch, halving):
    dm = make_dm()
    model = mlp(dm)
    jobs = jobs_for(dm, (0, 0.5, 1, 1.5, 2))

    def scorer():
        if halving:
            cfg = SearchConfig(strategy="parallel_halving", halving_eta=2)
            return make_scorer(cfg, model, SETTINGS, keep_states=True)
        return ParallelScorer(model, SETTINGS, keep_states=True)

    whole = scorer()
    a = {i: loss for i, loss, _ in score_jobs(whole, dm, jobs)}
    _oom_above(monkeypatch, 2)
    split = scorer()
    with pytest.warns(
        RuntimeWarning, match="out of memory with 5 members per stack; retrying with 2"
    ):
        b = {i: loss for i, loss, _ in score_jobs(split, dm, jobs)}
    stacked = (lambda s: s.runner.scorer) if halving else (lambda s: s)  # the ParallelScorer
    assert stacked(split)._oom_cap == 2 and stacked(whole)._oom_cap is None
    assert b == pytest.approx(a, abs=1e-5, nan_ok=True)  # restarted members replay exactly
    for key, state in stacked(whole)._states.items():
        for name, tensor in state.items():
            torch.testing.assert_close(stacked(split)._states[key][name], tensor, atol=1e-5, rtol=0)


def test_a_member_out_of_memory_alone_is_failed_not_fatal(monkeypatch):
    dm = make_dm()
    jobs = jobs_for(dm, (0, 1))
    scorer = ParallelScorer(mlp(dm), SETTINGS)
    assert scorer.prepare(dm)  # the two-member dry run stacks
    _oom_above(monkeypatch, 0)
    notes: dict[int, str] = {}
    with pytest.warns(RuntimeWarning, match="out of memory"):
        out = list(score_jobs(scorer, dm, jobs, notes))
    assert [i for i, _, _ in out] == [0, 1] and all(math.isnan(loss) for _, loss, _ in out)
    assert all(notes[i].startswith("failed: out of memory in the stacked loop") for i in (0, 1))


def test_other_errors_in_a_stack_are_not_swallowed(monkeypatch):
    dm = make_dm()
    jobs = jobs_for(dm, (0, 1))

    def broken(self, groups):
        raise RuntimeError("shape mismatch")

    scorer = ParallelScorer(mlp(dm), SETTINGS)
    assert scorer.prepare(dm)  # patched after the dry run, which would fall back instead
    monkeypatch.setattr(Stack, "step", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(score_jobs(scorer, dm, jobs))


def test_best_snapshot_is_never_worse_than_the_last_epoch():
    dm = make_dm()
    model = mlp(dm)
    jobs = jobs_for(dm, (0, 2))
    settings = TrainerSettings.from_kwargs({"max_epochs": 6, "accelerator": "cpu"})
    last = [
        loss
        for _, loss, _ in score_jobs(ParallelScorer(model, settings, snapshot="last"), dm, jobs)
    ]
    best = [
        loss
        for _, loss, _ in score_jobs(ParallelScorer(model, settings, snapshot="best"), dm, jobs)
    ]
    assert all(b <= v + 1e-7 for b, v in zip(best, last, strict=True))


# ------------------------------------------------------------------- halving
def test_rung_schedule_and_survivors():
    assert rung_steps([90, 120, 200] * 3, 3) == [10, 30]  # K=9, eta=3: 9 -> 3 -> 1
    assert rung_steps([100, 100], 3) == []  # fewer than eta candidates: no rung
    assert rung_steps([64] * 8, 2) == [8, 16, 32]
    losses = {0: 0.5, 1: 0.2, 2: math.nan, 3: 0.2, 4: 0.9, 5: 0.1}
    assert survivors(list(losses), losses, 3) == [1, 5]  # ties go to the smaller
    assert survivors([0, 1], {0: 0.3, 1: 0.1}, 3) == [1]


@pytest.mark.parametrize(
    ("parallel", "ratios", "eta", "first_rung"),
    [(True, (0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3), 3, 6), (False, (0, 0.5, 1, 2), 2, 2)],
)
def test_halving_prunes_the_worst_and_reports_where(parallel, ratios, eta, first_rung):
    dm = make_dm()
    model = mlp(dm)
    engine = SearchEngine(ratios=list(ratios), verbose=False)
    full = engine.run(dm, ParallelScorer(model, SETTINGS, snapshot="last"))
    strategy = "parallel_halving" if parallel else "halving"
    scorer = make_scorer(SearchConfig(strategy=strategy, halving_eta=eta), model, SETTINGS)
    result = engine.run(dm, scorer)
    kept = [c for c in result.candidates if c.val_balanced_loss is not None]
    assert len(kept) == 1  # 9 -> 3 -> 1 and 4 -> 2 -> 1
    pruned = [c for c in result.candidates if c.val_balanced_loss is None]
    assert len(pruned) == len(ratios) - 1
    assert all(c.status.startswith("pruned at rung") for c in pruned)
    assert sum("rung 1/3" in c.status for c in pruned) == first_rung
    # the survivor is fully trained: its loss is its full-budget (retrain) loss
    same = next(c for c in full.candidates if c.ratio == kept[0].ratio)
    assert kept[0].val_balanced_loss == pytest.approx(same.val_balanced_loss, abs=1e-5)
    assert result.selected_ratio == kept[0].ratio


def test_halving_keeps_what_the_rung_losses_favour():
    """A constructed case: rung losses decide; the pruned never win."""
    losses = {j: float(v) for j, v in enumerate([0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.5, 0.3, 0.4])}
    first = survivors(list(losses), losses, 3)
    assert first == [1, 4, 7]
    assert survivors(first, {1: 0.5, 4: 0.2, 7: 0.3}, 3) == [4]


# ------------------------------------------------------------ reuse the winner
def fit_with(tmp_path, strategy, refit, ratios=(0, 1, 2), **kw):
    dm = make_dm()
    model = mlp(dm)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    kw.setdefault("folds", None)  # the hold-out: only there can the winner be reused
    cb = VTSSCallback(
        ratios=list(ratios), strategy=strategy, refit=refit, verbose=False, progress=False, **kw
    )
    trainer = quiet_trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[cb],
    )
    trainer.fit(model, datamodule=dm)
    return cb, model, trainer, init


@pytest.mark.parametrize("strategy", ["retrain", "parallel", "parallel_halving"])
def test_the_winner_becomes_the_final_model_without_a_refit(tmp_path, strategy):
    cb, model, trainer, init = fit_with(tmp_path, strategy, refit=False)
    state = cb.result.final_state
    assert state is not None
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert trainer.global_step == 0  # the outer fit ran no optimizer step
    assert cb.result.timing["final_fit_seconds"] == 0.0
    assert "no refit" in cb.result.diagnostics["final_model"]
    assert any(not torch.equal(init[k], v) for k, v in state.items())


def test_refit_true_trains_the_final_model_again(tmp_path):
    cb, model, trainer, _ = fit_with(tmp_path, "parallel", refit=True)
    assert cb.result.final_state is None
    assert trainer.global_step > 0
    assert "final_model" not in cb.result.diagnostics


def test_retrain_winner_equals_what_the_refit_would_train(tmp_path):
    _, m1, _, _ = fit_with(tmp_path / "a", "retrain", refit=False, ratios=(0, 2))
    _, m2, _, _ = fit_with(tmp_path / "b", "retrain", refit=True, ratios=(0, 2))
    for k, v in m1.state_dict().items():
        assert torch.allclose(v, m2.state_dict()[k], atol=1e-6)


def test_callback_validates_speed_options():
    from vtss_lightning import VTSSError

    with pytest.raises(VTSSError, match="hold-out"):
        VTSSCallback(strategy="halving", folds=3)
    with pytest.raises(VTSSError, match="halving_eta"):
        VTSSCallback(strategy="halving", halving_eta=1.0)
    with pytest.raises(VTSSError, match="snapshot"):
        VTSSCallback(strategy="parallel", snapshot="first")
    scorer = make_scorer(SearchConfig(strategy="parallel"), None, SETTINGS)
    assert isinstance(scorer, ParallelScorer) and scorer.snapshot == "last"  # retrain's rule
    best = SearchConfig(strategy="parallel", snapshot="best")
    assert make_scorer(best, None, SETTINGS).snapshot == "best"
    assert VTSSCallback(strategy="parallel").snapshot == "last"
    halving = SearchConfig(strategy="parallel_halving", halving_eta=2)
    assert isinstance(make_scorer(halving, None, SETTINGS), HalvingScorer)


@pytest.mark.parametrize("strategy", ["parallel", "halving", "parallel_halving"])
def test_out_of_memory_in_one_at_a_time_paths_fails_one_candidate_not_the_search(
    monkeypatch, strategy
):
    """parallel's retrain fallback and plain halving are guarded like retrain."""
    from vtss_lightning.search.strategies import base

    dm = make_dm()
    gap = dm.class_gaps()[1]
    fit = base.fit_candidate

    def oom_when_large(model, loader, *args, **kwargs):
        if len(loader.y) > len(dm.active.y_train) + gap:  # only the largest candidate
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return fit(model, loader, *args, **kwargs)

    monkeypatch.setattr(base, "fit_candidate", oom_when_large)
    clipped = TrainerSettings.from_kwargs(  # clipping is not stacked: parallel falls back
        {"max_epochs": 1, "gradient_clip_val": 1.0, "accelerator": "cpu"}
    )
    config = SearchConfig(ratios=(0, 1, 2), strategy=strategy, halving_eta=2, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "retrying with batch size ..."
        result = SearchEngine(config).run(dm, make_scorer(config, mlp(dm), clipped))
    largest = result.candidates[-1]
    assert largest.val_balanced_loss is None
    assert largest.status.startswith("failed: out of memory")
    assert result.selected_ratio in (0.0, 1.0)


class OwnLoss(TabularClassifier):
    """Redefines ``loss``: the stack must keep vmapping it."""

    def loss(self, scores, y):
        return super().loss(scores, y) * 2


@pytest.mark.parametrize("class_weight", [None, "balanced", 4.0])
@pytest.mark.parametrize("kind", ["tabular", "tabular_mse", "image"])
def test_the_stacked_mean_loss_equals_each_members_own_loss(kind, class_weight):
    """The one-kernel stacked loss of the package's classifiers is, member by member,
    the module's ``loss`` on that member's scores; a module's own ``loss`` keeps vmap."""
    from vtss_lightning.models import ImageClassifier

    torch.manual_seed(0)
    classes = 2 if isinstance(class_weight, float) else 3  # a number weighs binary tasks
    counts = [50, 30, 20][:classes]
    if kind == "image":
        module = ImageClassifier(width=4, depth=1, class_weight=class_weight)
        module.build(image_shape=(1, 8, 8), num_classes=classes, class_counts=counts)
    else:
        loss = "mse" if kind == "tabular_mse" else "cross_entropy"
        module = TabularClassifier(loss=loss, class_weight=class_weight)
        module.build(n_features=4, num_classes=classes, class_counts=counts)
    scores, y = torch.randn(5, 16, classes), torch.randint(0, classes, (5, 16))
    stacked = stacked_mean_loss(module)
    assert stacked is not None
    want = torch.stack([module.loss(scores[k], y[k]) for k in range(5)])
    torch.testing.assert_close(stacked(scores, y), want, rtol=1e-6, atol=1e-7)
    assert stacked_mean_loss(OwnLoss()) is None
