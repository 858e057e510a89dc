"""strategy="parallel" over folds: the (fold x candidate) grid trains as stacks.

The scorer takes the engine's two-phase call: each fold is staged while the engine is
inside it, then members of every fold train together (a stacked loop, or one joint
solve for the convex full-batch model), and each member's loss must be the one it gets
stacked with its own fold's candidates only (``PerSplit``: the one-split-at-a-time
call) and, without dropout, retrain's.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from helpers import tabular_dm

from vtss_lightning import TabularDataModule
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search import SearchEngine
from vtss_lightning.search.scores import MemoryStore
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings, _full_batch
from vtss_lightning.search.strategies._stack import Stack
from vtss_lightning.search.strategies.parallel import ParallelScorer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU

TWO_EPOCHS = TrainerSettings.from_kwargs({"max_epochs": 2, "accelerator": "cpu"})
ONE_EPOCH = TrainerSettings.from_kwargs({"max_epochs": 1, "accelerator": "cpu"})
RATIOS = [0, 1, 2]
REL = 1e-5  # stacked with other folds vs with its own fold only

#: 160 "a" vs 40 "b" rows, 4 features all shifted by 1.0, batches of 32; set up.
make_dm = partial(
    tabular_dm, n_neg=160, n_pos=40, n_features=4, labels=("a", "b"), batch_size=32, setup=True
)


class PerSplit(ParallelScorer):
    """``parallel`` fed one split at a time: each fold's candidates stacked alone."""

    scores_across_splits = False


def mlp(dm, **kw):
    torch.manual_seed(0)
    model = TabularClassifier(**{"hidden_dims": [8], "optimizer": "adamw", "lr": 0.02, **kw})
    model.configure_from_data(dm)
    return model


def logistic(dm, **kw):
    torch.manual_seed(0)
    model = TabularClassifier(**kw)
    model.configure_from_data(dm)
    return model


def search(scorer, folds=3, store=None, dm=None):
    engine = SearchEngine(ratios=RATIOS, folds=folds, extend_grid=False, verbose=False)
    return engine.run(make_dm() if dm is None else dm, scorer, store)


def fold_losses(result) -> list[list[float]]:
    return [c.fold_losses for c in result.candidates]


def assert_same(got, want, rel=REL, abs_=1e-7):
    for a, b in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=rel, abs=abs_)


@pytest.fixture
def stacks(monkeypatch):
    """The folds of each stacked training (``ParallelScorer._train``), in call order."""
    seen: list[set[int | None]] = []
    train = ParallelScorer._train

    def spy(self, members):
        seen.append({m.split.index for m in members if m.steps < m.target})
        return train(self, members)

    monkeypatch.setattr(ParallelScorer, "_train", spy)
    return seen


@pytest.fixture
def solves(monkeypatch):
    """``(members, row blocks)`` of each joint solve."""
    seen: list[tuple[int, int]] = []
    solve = _full_batch.solve

    def spy(objective, *args, **kwargs):
        seen.append((objective.size, len(objective.blocks)))
        return solve(objective, *args, **kwargs)

    monkeypatch.setattr(_full_batch, "solve", spy)
    return seen


# ------------------------------------------------------------ stacked loop
def test_one_stack_trains_every_fold_and_each_member_replays_its_own_fold(stacks):
    model = mlp(make_dm())
    staged = search(ParallelScorer(model, TWO_EPOCHS, verbose=False))
    assert stacks == [{0, 1, 2}]  # nine members, one stacked loop
    stacks.clear()
    alone = search(PerSplit(model, TWO_EPOCHS, verbose=False))
    assert stacks == [{None}] * 3  # one stack per fold
    assert_same(fold_losses(staged), fold_losses(alone))
    retrain = search(RetrainScorer(model, TWO_EPOCHS))
    assert_same(fold_losses(staged), fold_losses(retrain), rel=0, abs_=1e-5)  # no dropout
    assert len({round(v, 6) for row in fold_losses(staged) for v in row}) == 9
    assert staged.selected_ratio == retrain.selected_ratio


def test_members_do_not_depend_on_their_stack_mates(stacks):
    """Stacks of one or two members from any folds: the losses of one stack of all."""
    model = mlp(make_dm())
    whole = search(ParallelScorer(model, TWO_EPOCHS, verbose=False))
    tiny = ParallelScorer(model, TWO_EPOCHS, memory_budget_mb=1e-3, verbose=False)
    alone = search(tiny)
    assert tiny.chunk_size == 1 and len(stacks) == 1 + 9
    assert_same(fold_losses(alone), fold_losses(whole))


def test_a_stack_out_of_memory_is_split_across_folds_and_replays(monkeypatch):
    model = mlp(make_dm())
    want = search(ParallelScorer(model, TWO_EPOCHS, verbose=False))
    step = Stack.step

    def limited(self, groups):
        if self.size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step(self, groups)

    monkeypatch.setattr(Stack, "step", limited)
    scorer = ParallelScorer(model, TWO_EPOCHS, verbose=False)
    with pytest.warns(RuntimeWarning, match="out of memory with 9 members per stack"):
        got = search(scorer)
    assert scorer._oom_cap == 2
    assert_same(fold_losses(got), fold_losses(want))


def test_a_resumed_search_stages_only_what_is_left_and_ends_the_same(stacks):
    model = mlp(make_dm())
    full_store = MemoryStore()
    full = search(ParallelScorer(model, TWO_EPOCHS, verbose=False), store=full_store)
    done = {(0, 0), (0, 2), (1, 1), (2, 0), (2, 1)}  # fold 0 and 2 partly, fold 1 partly
    store = MemoryStore()
    for key in done:
        store.scores[key] = full_store.scores[key]
    store.comparators = {s: v for s, v in full_store.comparators.items() if (s, 0) in done}
    stacks.clear()
    resumed = search(ParallelScorer(model, TWO_EPOCHS, verbose=False), store=store)
    assert stacks == [{0, 1, 2}]  # the four jobs left, one stack
    assert set(store.scores) == set(full_store.scores)
    assert_same(fold_losses(resumed), fold_losses(full))
    assert store.comparators == pytest.approx(full_store.comparators, rel=REL)


def test_each_fold_keeps_its_own_comparator_and_the_last_fold_its_weights():
    model = mlp(make_dm())
    staged = ParallelScorer(model, TWO_EPOCHS, keep_states=True, verbose=False)
    per_split = PerSplit(model, TWO_EPOCHS, keep_states=True, verbose=False)
    a, b = search(staged), search(per_split)
    ca, cb = (r.diagnostics["comparators"]["logit_adjustment"] for r in (a, b))
    assert ca["splits"] == cb["splits"] == 3
    assert ca["val_balanced_loss"] == pytest.approx(cb["val_balanced_loss"], rel=REL)
    # trained_state: the weights of the last split staged, as for the per-split call
    assert set(staged._states) == set(per_split._states) and len(staged._states) == 3
    for key, state in per_split._states.items():
        for name, tensor in state.items():
            torch.testing.assert_close(staged._states[key][name], tensor, atol=1e-5, rtol=0)


def test_on_the_holdout_the_winner_is_kept_for_the_final_model():
    model = mlp(make_dm())
    scorer = ParallelScorer(model, TWO_EPOCHS, keep_states=True, verbose=False)
    result = search(scorer, folds=None)
    state = scorer.trained_state(result.selected_index_sizes)
    assert state is not None and set(state) == set(model.state_dict())
    retrain = RetrainScorer(model, TWO_EPOCHS, keep_states=True)
    search(retrain, folds=None)
    want = retrain.trained_state(result.selected_index_sizes)
    assert max(float((state[k] - want[k]).abs().max()) for k in want) < 1e-5


def test_folds_of_different_input_widths_stack_apart(stacks):
    """An unbuilt template is built per input width (as each fold's retrain fit builds
    its own); only members of one width share a stack."""
    wide, narrow = make_dm(n_features=6), make_dm(n_features=4)
    jobs = {dm: _jobs(dm) for dm in (wide, narrow)}
    template = TabularClassifier(hidden_dims=[8], optimizer="adamw", lr=0.02)
    scorer = ParallelScorer(template, TWO_EPOCHS, verbose=False)
    for s, dm in enumerate((wide, narrow, wide)):
        scorer.stage(dm, s, jobs[dm])
    got = {(s, i): loss for s, i, loss, _ in scorer.run_staged()}
    assert sorted(map(sorted, stacks)) == [[0, 2], [1]]
    assert len(scorer._bases) == 2
    for s, dm in enumerate((wide, narrow, wide)):
        alone = PerSplit(template, TWO_EPOCHS, verbose=False)
        for i, loss, _ in alone.score_many(dm, jobs[dm]):
            assert got[(s, i)] == pytest.approx(loss, rel=REL), (s, i)


def _jobs(dm):
    gap = dm.class_gaps()[1]
    dm.prepare_pool({1: 2 * gap})
    return [(i, {1: int(r * gap)}) for i, r in enumerate(RATIOS)]


# -------------------------------------------------- joint solve (full batch)
def test_the_joint_solve_spans_every_fold_with_one_rows_block_per_fold(solves):
    model = logistic(make_dm())
    staged = search(ParallelScorer(model, ONE_EPOCH, verbose=False))
    assert solves == [(9, 3)]  # nine members, each fold's rows held once
    solves.clear()
    alone = search(PerSplit(model, ONE_EPOCH, verbose=False))
    assert solves == [(3, 1)] * 3
    assert_same(fold_losses(staged), fold_losses(alone), rel=1e-6)
    retrain = search(RetrainScorer(model, ONE_EPOCH))
    assert_same(fold_losses(staged), fold_losses(retrain), rel=0, abs_=1e-4)


def test_joint_members_solved_alone_match_the_joint_solve(solves):
    model = logistic(make_dm())
    whole = search(ParallelScorer(model, ONE_EPOCH, verbose=False))
    alone = search(ParallelScorer(model, ONE_EPOCH, memory_budget_mb=1e-6, verbose=False))
    assert solves[1:] == [(1, 1)] * 9
    assert_same(fold_losses(alone), fold_losses(whole), rel=1e-6)


def test_unconverged_members_are_retrained_alone_on_their_own_fold():
    """max_iter=3: the joint solve leaves every member unconverged; each is retrained
    with the retrain recipe on its staged fold, long after the engine left it."""
    model = logistic(make_dm(), max_iter=3)
    scorer = ParallelScorer(model, ONE_EPOCH, verbose=False)
    staged = search(scorer)
    retrain = search(RetrainScorer(model, ONE_EPOCH))
    assert scorer.fallback_reason is None
    assert_same(fold_losses(staged), fold_losses(retrain), rel=0, abs_=1e-7)
    assert all(c.status.startswith("trained alone (retrain recipe)") for c in staged.candidates)


def test_the_joint_lbfgs_fallback_spans_folds_too(solves, monkeypatch):
    monkeypatch.setattr(_full_batch, "USE_NEWTON", False)
    model = logistic(make_dm())
    staged = search(ParallelScorer(model, ONE_EPOCH, verbose=False))
    alone = search(PerSplit(model, ONE_EPOCH, verbose=False))
    assert solves[0] == (9, 3)
    assert_same(fold_losses(staged), fold_losses(alone), rel=1e-5)


class OwnLoader(TabularDataModule):
    """A DataModule with a training loader of its own (here the same batches)."""

    def make_train_loader(self, sizes=None, full_batch=False):
        return super().make_train_loader(sizes, full_batch)


def own_loader_dm() -> OwnLoader:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    x[160:] += 1.0
    dm = OwnLoader.from_arrays(x, np.array(["a"] * 160 + ["b"] * 40), seed=0, batch_size=32)
    dm.setup()
    return dm


def test_a_datamodule_with_its_own_loader_is_asked_while_each_fold_is_active():
    """Its loaders are taken as each fold is staged (not replayed from the staged rows);
    the joint solve's unconverged members are retrained on those, folds long left."""
    model = mlp(own_loader_dm())
    staged = search(ParallelScorer(model, TWO_EPOCHS, verbose=False), dm=own_loader_dm())
    alone = search(PerSplit(model, TWO_EPOCHS, verbose=False), dm=own_loader_dm())
    assert_same(fold_losses(staged), fold_losses(alone))
    model = logistic(own_loader_dm(), max_iter=3)
    staged = search(ParallelScorer(model, ONE_EPOCH, verbose=False), dm=own_loader_dm())
    retrain = search(RetrainScorer(model, ONE_EPOCH), dm=own_loader_dm())
    assert_same(fold_losses(staged), fold_losses(retrain), rel=0, abs_=1e-7)
    assert all(c.status.startswith("trained alone (retrain recipe)") for c in staged.candidates)


# ------------------------------------------------------------------ fallback
def test_a_module_found_not_to_stack_while_staging_is_scored_per_fold_right_away(capsys):
    """Full-batch L-BFGS with a hidden layer: known only from the built module, so the
    first fold is staged; every fold is then scored with retrain as it is staged."""
    model = mlp(make_dm(), optimizer="lbfgs", max_iter=5)
    scorer = ParallelScorer(model, ONE_EPOCH, name="auto")
    assert scorer.scores_across_splits
    got = search(scorer)
    assert "not convex in its parameters" in scorer.fallback_reason
    assert "VTSS auto: training one candidate at a time" in capsys.readouterr().out
    assert not scorer.scores_across_splits  # from now on split by split
    assert fold_losses(got) == fold_losses(search(RetrainScorer(model, ONE_EPOCH)))


def test_settings_that_cannot_stack_keep_the_split_by_split_call(capsys, stacks):
    clipped = TrainerSettings.from_kwargs(
        {"max_epochs": 1, "gradient_clip_val": 1.0, "accelerator": "cpu"}
    )
    model = mlp(make_dm())
    scorer = ParallelScorer(model, clipped)
    assert not scorer.scores_across_splits  # each retrain fit is recorded as it ends
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = search(scorer)
    assert "clipping" in scorer.fallback_reason and stacks == []
    assert "VTSS parallel: training one candidate at a time" in capsys.readouterr().out
    want = search(RetrainScorer(model, clipped))
    assert fold_losses(got) == fold_losses(want)
    assert all(not math.isnan(v) for row in fold_losses(got) for v in row)
