"""Training sets as views (issue 15, lean data path): the pool is laid out right after
the split's real training rows in one float32 buffer, so a candidate's training set is
a view of it, not a copy. Every row, label, loss and final weight must equal what the
copied assembly gave, and nothing may write into the shared rows."""

from __future__ import annotations

import gc
import pickle
import weakref
from functools import partial

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import old_pool, small_mlp, tabular_dm

import vtss_lightning.data.pool as pool_module
from vtss_lightning import SyntheticAugmentationDataModule, VTSSCallback, VTSSError
from vtss_lightning._random import pool_chunk_seed
from vtss_lightning.data.row_layout import joined_rows, stack_rows, standalone, training_rows
from vtss_lightning.generators import GaussianGenerator, JitterGenerator, SMOTEGenerator
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search import SearchEngine
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings
from vtss_lightning.search.strategies._ray_trial import StagedSplit
from vtss_lightning.search.strategies._staged import SplitView
from vtss_lightning.search.strategies.parallel import ParallelScorer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
torch.set_num_threads(1)

ONE_EPOCH = TrainerSettings.from_kwargs({"max_epochs": 1, "accelerator": "cpu"})


# --------------------------------------------------------------------------- helpers


def arrays_dm(counts=(200, 60), width: int = 4, chunk: int | None = None, **kwargs):
    """A set-up in-memory DataModule with ``counts`` rows per class (float32 features)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(sum(counts), width)).astype(np.float32)
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    dm = SyntheticAugmentationDataModule(x, y, seed=3, **kwargs)
    dm.setup()
    if chunk is not None:
        dm.pool_builder.chunk_rows = chunk
    return dm


def old_training_set(x_train, y_train, pools: dict[int, torch.Tensor]):
    """Real rows, then each class's rows by class index, as ``torch.cat`` lays them out."""
    blocks = [(k, rows) for k, rows in sorted(pools.items()) if len(rows)]
    x = torch.cat([x_train, *(rows for _, rows in blocks)])
    y = torch.cat([y_train, *(torch.full((len(rows),), k) for k, rows in blocks)])
    return x, y


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def copied_assembly(monkeypatch) -> None:
    """The assembly before views: every training set one copy (``stack_rows``)."""
    monkeypatch.setattr(pool_module, "joined_rows", lambda parts: None)


# ------------------------------------------------------------------ joined rows


def test_joined_rows_are_a_view_only_of_rows_back_to_back():
    buffer = torch.arange(40.0).reshape(10, 4)
    view = joined_rows([buffer[:3], buffer[3:3], buffer[3:7]])  # an empty part is skipped
    assert torch.equal(view, buffer[:7]) and same_storage(view, buffer)
    assert view.storage_offset() == 0 and view.is_contiguous()
    assert torch.equal(joined_rows([buffer[2:5], buffer[5:9]]), buffer[2:9])
    assert joined_rows([buffer[:3], buffer[4:7]]) is None  # a gap
    assert joined_rows([buffer[3:5], buffer[:3]]) is None  # out of order
    assert joined_rows([buffer[:3], buffer[3:7].clone()]) is None  # another storage
    assert joined_rows([buffer[:3, :2], buffer[3:5, :2]]) is None  # not contiguous
    assert joined_rows([buffer[:2], buffer.double()[2:4]]) is None
    assert joined_rows([buffer[:0]]) is None


def test_training_rows_give_stack_rows_layout_as_a_view_or_a_copy():
    buffer = torch.randn(12, 3)
    head = (buffer[:5], torch.zeros(5, dtype=torch.long))
    blocks = [(1, buffer[5:9]), (2, buffer[9:11])]
    want = stack_rows(blocks, head)
    got = training_rows(blocks, head)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert same_storage(got[0], buffer) and not same_storage(want[0], buffer)
    apart = [(1, buffer[5:8]), (2, buffer[9:11])]  # a partial first class: not back to back
    got = training_rows(apart, head)
    assert not same_storage(got[0], buffer)
    assert all(torch.equal(a, b) for a, b in zip(got, stack_rows(apart, head), strict=True))


# ------------------------------------------------------------- the split's buffer


@pytest.mark.parametrize("generator", [SMOTEGenerator, JitterGenerator, GaussianGenerator])
def test_a_training_set_is_a_view_equal_to_the_old_assembly(generator):
    dm = arrays_dm(chunk=16, generator=generator())
    x_train = dm.holdout.x_train.clone()
    y_train = dm.holdout.y_train.clone()
    dm.prepare_pool({1: 90})
    split = dm.holdout
    assert torch.equal(split.x_train, x_train)  # the buffer's head: the same rows
    for m in (1, 16, 37, 90):
        xs, ys = dm.training_tensors({1: m})
        want_x, want_y = old_training_set(x_train, y_train, {1: old_pool(dm, 1, m)})
        assert torch.equal(xs, want_x) and torch.equal(ys, want_y)
        assert xs.dtype == torch.float32 and xs.is_contiguous()
        assert same_storage(xs, split.x_train) and same_storage(xs, split.pool.rows[1])
        assert xs.storage_offset() == split.x_train.storage_offset()
    xs, ys = dm.training_tensors({1: 0})
    assert xs is split.x_train and ys is split.y_train


def test_the_rows_encoded_at_setup_are_held_once():
    dm = arrays_dm()
    encoded = weakref.ref(dm.holdout.x_train)
    dm.prepare_pool({1: 100})
    gc.collect()
    assert encoded() is None  # the pool's buffer holds the real rows, nothing else does
    split = dm.holdout
    rows = len(split.x_train) + 100
    assert split.x_train.untyped_storage().nbytes() == rows * 4 * 4
    assert split.pool.head is split.x_train


def test_growing_the_pool_builds_a_new_buffer_and_keeps_earlier_views():
    grown, direct = arrays_dm(chunk=16), arrays_dm(chunk=16)
    small_x, small_y = grown.training_tensors({1: 30})
    kept = small_x.clone()
    first = grown.holdout.x_train
    big_x, _ = grown.training_tensors({1: 100})  # a grid extension: a larger pool
    assert torch.equal(small_x, kept)  # the earlier view's rows were not written
    assert not same_storage(big_x, small_x) and same_storage(big_x, grown.holdout.x_train)
    assert torch.equal(grown.holdout.x_train, first)
    again_x, again_y = grown.training_tensors({1: 30})
    assert torch.equal(again_x, small_x) and torch.equal(again_y, small_y)
    want, _ = direct.training_tensors({1: 100})
    assert torch.equal(big_x, want)
    assert torch.equal(grown.holdout.pool.rows[1], old_pool(direct, 1, 100))


def test_several_classes_share_the_buffer_and_a_gap_falls_back_to_a_copy():
    dm = arrays_dm(counts=(200, 60, 40), chunk=16)
    x_train, y_train = dm.holdout.x_train.clone(), dm.holdout.y_train.clone()
    pool = dm.prepare_pool({1: 50, 2: 70})
    split = dm.holdout
    # a view while only the last class taken is cut short; class 1's rows (50 of them)
    # lie between the real rows and class 2's
    cases = [
        ({1: 50, 2: 70}, True), ({1: 50, 2: 9}, True), ({1: 20}, True),
        ({1: 0, 2: 70}, False), ({1: 20, 2: 70}, False),
    ]  # fmt: skip
    for sizes, back_to_back in cases:
        xs, ys = dm.training_tensors(sizes)
        rows = {k: pool.rows[k][:m] for k, m in sizes.items()}
        want_x, want_y = old_training_set(x_train, y_train, rows)
        assert torch.equal(xs, want_x) and torch.equal(ys, want_y)
        assert same_storage(xs, split.x_train) == back_to_back
    for k, m in ((1, 50), (2, 70)):
        assert torch.equal(pool.rows[k], old_pool(dm, k, m))


def test_a_staged_split_is_a_view_of_the_buffer_with_the_copied_layout():
    dm = arrays_dm(counts=(200, 60, 40))
    view = SplitView(dm, {1: 50, 2: 30}, torch.device("cpu"))
    split = dm.active
    assert same_storage(view.x, split.x_train)
    assert view.x_train.data_ptr() == split.x_train.data_ptr()
    want = stack_rows(split.pool.prefixes({1: 50, 2: 30}), (split.x_train, split.y_train))
    assert torch.equal(view.x, want[0]) and torch.equal(view.y, want[1])
    rows = view.rows_of({1: 12, 2: 30})
    xs, ys = dm.training_tensors({1: 12, 2: 30})
    assert torch.equal(view.x[rows], xs) and torch.equal(view.y[rows], ys)


def test_moving_to_a_device_and_switching_generators_keep_the_layout():
    dm = arrays_dm(generator=[SMOTEGenerator(), JitterGenerator()])
    dm.prepare_pool({1: 40})
    first = dm.holdout.x_train
    dm.to_device("cpu")  # the same device: the buffer moves as one tensor
    assert same_storage(dm.training_tensors({1: 40})[0], dm.holdout.x_train)
    smote = dm.training_tensors({1: 40})[0].clone()
    dm.use_generator(1)
    jitter = dm.training_tensors({1: 40})[0]
    assert same_storage(jitter, dm.holdout.x_train) and not torch.equal(jitter, smote)
    dm.use_generator(0)  # x_train is the head of SMOTE's buffer again
    back = dm.training_tensors({1: 40})[0]
    assert torch.equal(back, smote) and same_storage(back, dm.holdout.pool.rows[1])
    assert torch.equal(dm.holdout.x_train, first)


def test_a_failed_draw_leaves_the_split_as_it_was():
    class FailsLater(SMOTEGenerator):
        def sample(self, n, generator_seed, label=None):
            if generator_seed == pool_chunk_seed(3, 1, 2):  # the third chunk
                raise VTSSError("no more rows")
            return super().sample(n, generator_seed, label)

    dm = arrays_dm(chunk=16, generator=FailsLater())
    before = dm.training_tensors({1: 20})[0].clone()
    pool, x_train = dm.holdout.pool, dm.holdout.x_train
    with pytest.raises(VTSSError, match="no more rows"):
        dm.prepare_pool({1: 60})
    assert dm.holdout.pool is pool and dm.holdout.x_train is x_train
    assert torch.equal(dm.training_tensors({1: 20})[0], before)


def test_rows_sent_to_ray_leave_the_rest_of_the_buffer_behind():
    dm = arrays_dm()
    dm.prepare_pool({1: 60})
    xs, _ = dm.training_tensors({1: 20})  # 20 of the buffer's 60 pool rows
    compact = standalone(xs)
    assert torch.equal(compact, xs) and compact.untyped_storage().nbytes() == xs.nbytes
    assert standalone(compact) is compact
    assert len(pickle.dumps(compact)) < len(pickle.dumps(xs))  # a view pickles its storage
    staged = StagedSplit.of(dm)
    assert staged.active.x_train.untyped_storage().nbytes() == dm.holdout.x_train.nbytes
    assert torch.equal(staged.active.x_train, dm.holdout.x_train)


# --------------------------------------------------- searches: same losses, rows intact

make_dm = partial(tabular_dm, n_neg=160, n_pos=40, n_features=4, batch_size=32, setup=True)


def logistic(dm):
    torch.manual_seed(0)
    model = TabularClassifier()
    model.configure_from_data(dm)
    return model


def search_losses(scorer_cls, model, folds):
    dm = make_dm()
    engine = SearchEngine(ratios=[0, 0.5, 1, 2], folds=folds, extend_grid=False, verbose=False)
    quiet = {"verbose": False} if scorer_cls is ParallelScorer else {}
    result = engine.run(dm, scorer_cls(model(dm), ONE_EPOCH, seed=0, **quiet))
    return [c.fold_losses for c in result.candidates]


@pytest.mark.parametrize(
    "scorer_cls, model, folds",
    [
        (RetrainScorer, logistic, None),
        (RetrainScorer, small_mlp, 3),
        (ParallelScorer, logistic, 3),
        (ParallelScorer, small_mlp, None),
    ],
)
def test_search_losses_equal_the_copied_assembly(monkeypatch, scorer_cls, model, folds):
    views = search_losses(scorer_cls, model, folds)
    copied_assembly(monkeypatch)
    copied = search_losses(scorer_cls, model, folds)
    assert views == copied  # bit for bit


def fit_with_callback(tmp_path, strategy: str):
    dm = make_dm()
    pl.seed_everything(0)
    cb = VTSSCallback(
        ratios=[0, 1, 2], strategy=strategy, folds=None, final_rows="train",
        progress=False, verbose=False,
    )  # fmt: skip
    model = TabularClassifier()
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[cb],
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return dm, model, cb.result


@pytest.mark.parametrize("strategy", ["retrain", "auto"])
def test_a_search_and_final_fit_write_nothing_into_the_shared_rows(tmp_path, strategy):
    dm, model, result = fit_with_callback(tmp_path / "views", strategy)
    fresh = make_dm()
    split, capacity = dm.holdout, dm.holdout.pool.capacity
    fresh.prepare_pool(capacity)
    assert torch.equal(split.x_train, fresh.holdout.x_train)
    for k, rows in split.pool.rows.items():
        assert torch.equal(rows, fresh.holdout.pool.rows[k])
    assert same_storage(dm.training_tensors()[0], split.x_train)  # the final fit's rows


@pytest.mark.parametrize("strategy", ["retrain", "auto"])
def test_the_final_model_equals_the_one_trained_on_copies(tmp_path, monkeypatch, strategy):
    _, views, result = fit_with_callback(tmp_path / "views", strategy)
    copied_assembly(monkeypatch)
    _, copies, again = fit_with_callback(tmp_path / "copies", strategy)
    assert [c.val_balanced_loss for c in result.candidates] == [
        c.val_balanced_loss for c in again.candidates
    ]
    for (name, a), (_, b) in zip(
        views.state_dict().items(), copies.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
