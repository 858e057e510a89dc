"""Which rows the final model trains on after the search (``final_rows``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import tabular_dm
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from vtss_lightning import VTSSCallback, VTSSTuner
from vtss_lightning.errors import VTSSError
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search.final_rows import scaled_sizes, validation_monitors
from vtss_lightning.search.report import VTSSResult

N_NEG, N_POS = 150, 20  # a hold-out keeps 4 minority rows: "auto" runs K-fold


def make_dm(**kwargs):
    return tabular_dm(N_NEG, N_POS, n_test=40, **kwargs)


def fit(tmp_path, callbacks, **vtss):
    """A K-fold search (3 folds unless ``vtss`` says otherwise) inside ``trainer.fit``."""
    dm = make_dm()
    pl.seed_everything(0)
    vtss = {"folds": 3, **vtss}
    cb = VTSSCallback(ratios=[0, 1, 2], progress=False, verbose=False, **vtss)
    model = TabularClassifier()
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[cb, *callbacks],
    )
    trainer.fit(model, datamodule=dm)
    return cb.result, dm, model, trainer


def test_after_k_fold_the_final_model_trains_on_every_development_row(tmp_path):
    result, dm, model, trainer = fit(tmp_path, [], folds="auto")
    assert result.diagnostics["validation"] == "5x5-fold"  # the default scheme here
    assert result.final_rows == "all" and dm.trains_on_all_rows
    split = dm.active
    np.testing.assert_array_equal(split.train_index, np.arange(N_NEG + N_POS))
    assert len(split.x_train) == N_NEG + N_POS and len(split.x_val) == 0
    # the selected ratio of the all-rows gap (130 = 150 - 20), not the hold-out's sizes
    ratio = result.selected_ratio
    assert result.final_index_sizes == ({1: round(ratio * 130)} if ratio else {1: 0})
    assert dm.synthetic_sizes == result.final_index_sizes
    _, y = dm.training_tensors()
    assert len(y) == N_NEG + N_POS + result.final_index_sizes[1]
    assert trainer.limit_val_batches == 0  # validation rows are training rows now
    final = result.diagnostics["final_rows"]
    assert final["rows"] == "all" and final["n_rows"] == N_NEG + N_POS
    assert "-fold selection validated every development row" in final["reason"]
    # the generator was fitted on the 20 development minority rows (none of the test rows)
    smote_rows = dm.active.generators[1]._x
    assert len(smote_rows) == N_POS
    torch.testing.assert_close(smote_rows, split.x_train[split.y_train == 1])


def test_test_rows_are_encoded_with_the_final_preprocessing(tmp_path):
    result, dm, model, _ = fit(tmp_path, [])
    raw_test = dm.load_data()[2]
    expected = dm.active.preprocessor.transform(raw_test)
    torch.testing.assert_close(dm.x_test, expected)
    assert not torch.equal(dm.x_test, dm.holdout.preprocessor.transform(raw_test))
    with torch.no_grad():
        logits = model(dm.x_test)
    per_class = [
        torch.nn.functional.cross_entropy(logits[dm.y_test == k], dm.y_test[dm.y_test == k])
        for k in range(2)
    ]
    assert result.test_metrics["balanced_log_loss"] == pytest.approx(
        float(sum(per_class) / 2), abs=1e-5
    )


def test_a_callback_that_monitors_keeps_the_hold_out(tmp_path):
    stop = EarlyStopping(monitor="val_balanced_loss", patience=3)
    result, dm, _, trainer = fit(tmp_path, [stop])
    assert result.final_rows == "train" and not dm.trains_on_all_rows
    assert "EarlyStopping(monitor='val_balanced_loss')" in result.diagnostics["final_rows"]["reason"]
    assert dm.synthetic_sizes == result.selected_index_sizes == result.final_index_sizes
    assert trainer.limit_val_batches != 0
    assert "val_balanced_loss" in trainer.callback_metrics


def test_a_checkpoint_without_monitor_does_not_count(tmp_path):
    result, dm, _, _ = fit(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "ckpt")])
    assert result.final_rows == "all"
    assert list((tmp_path / "ckpt").glob("*.ckpt"))  # the user's checkpoint still written


@pytest.mark.parametrize(
    ("vtss", "rows"),
    [({"final_rows": "train"}, "train"), ({"final_rows": "all", "folds": None}, "all")],
)
def test_final_rows_forced(tmp_path, vtss, rows):
    result, dm, _, _ = fit(tmp_path, [], **vtss)
    assert result.final_rows == rows
    assert dm.trains_on_all_rows == (rows == "all")
    assert result.diagnostics["final_rows"]["reason"] == "as configured"


def test_hold_out_selection_keeps_its_rows(tmp_path):
    result, dm, _, _ = fit(tmp_path, [], folds=None)
    assert result.final_rows == "train" and not dm.trains_on_all_rows


def test_refit_false_with_final_rows_all_is_refused():
    with pytest.raises(VTSSError, match="final_rows='all'"):
        VTSSCallback(refit=False, final_rows="all")
    with pytest.raises(VTSSError, match="unknown final_rows 'some'"):
        VTSSCallback(final_rows="some")


def test_report_round_trip_and_summary(tmp_path):
    result, *_ = fit(tmp_path, [])
    data = json.loads((tmp_path / "vtss_report.json").read_text())
    assert data["final_rows"] == "all"
    back = VTSSResult.from_dict(data)
    assert back.final_index_sizes == result.final_index_sizes
    assert "VTSS final model: all 170 development rows" in back.summary()


def test_tuner_leaves_the_datamodule_on_all_rows_with_no_validation_rows(tmp_path):
    dm = make_dm()
    tuner = VTSSTuner({"max_epochs": 1}, ratios=[0, 1], folds=2, verbose=False, progress=False)
    result = tuner.search(TabularClassifier(), dm)
    assert result.final_rows == "all" and dm.trains_on_all_rows
    assert len(dm.val_dataloader()) == 0
    model = TabularClassifier()
    pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
        enable_model_summary=False, limit_val_batches=0,
    ).fit(model, datamodule=dm)
    assert len(dm.training_tensors()[1]) == N_NEG + N_POS + result.final_index_sizes[1]


def test_tuner_callbacks_reach_the_candidates_and_keep_the_hold_out(tmp_path):
    """Callbacks given to the tuner shape every candidate (as in the callback path);
    one that monitors keeps the final fit's validation rows."""
    stop = EarlyStopping(monitor="val_balanced_loss", patience=0, min_delta=10.0)
    kwargs = {"max_epochs": 6, "callbacks": [stop]}
    model = TabularClassifier(hidden_dims=[8], optimizer="adamw", lr=0.01)
    tuner = VTSSTuner(kwargs, ratios=[0, 1], folds=2, verbose=False, progress=False)
    result = tuner.search(model, make_dm())
    assert result.final_rows == "train"
    assert "EarlyStopping(monitor='val_balanced_loss')" in result.diagnostics["final_rows"]["reason"]
    assert "EarlyStopping" in result.config["trainer"]["callbacks"]
    plain = VTSSTuner({"max_epochs": 6}, ratios=[0, 1], folds=2, verbose=False, progress=False)
    unstopped = plain.search(model, make_dm())
    # min_delta=10 stops every candidate after its first validation: other losses
    assert [c.val_balanced_loss for c in result.candidates] != pytest.approx(
        [c.val_balanced_loss for c in unstopped.candidates], abs=1e-6
    )


def test_scaled_sizes_keep_the_share_of_the_gap():
    assert scaled_sizes(1.5, {1: 15}, {1: 10}, {1: 13}) == {1: 20}  # round half up 19.5
    assert scaled_sizes(None, {1: 5, 2: 0}, {1: 10, 2: 4}, {1: 20, 2: 6}) == {1: 10, 2: 0}
    assert scaled_sizes(1.0, {1: 10}, {1: 10}, {0: 0, 1: 12}) == {1: 12}


def test_validation_monitors_sees_callbacks_and_plateau_schedulers():
    sched = SimpleNamespace(
        monitor="val_balanced_loss", scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(
            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        )
    )
    trainer = SimpleNamespace(
        callbacks=[EarlyStopping(monitor="a"), ModelCheckpoint(), VTSSCallback()],
        lr_scheduler_configs=[sched, SimpleNamespace(monitor=None, scheduler=None)],
    )
    assert validation_monitors(trainer) == [
        "EarlyStopping(monitor='a')",
        "ReduceLROnPlateau(monitor='val_balanced_loss')",
    ]
