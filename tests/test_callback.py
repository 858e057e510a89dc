"""VTSSCallback / VTSSTuner / scorers with real (tiny, CPU) Lightning fits."""

from __future__ import annotations

import json
import math
import re
import warnings
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import LinearModule, progress_lines, quiet_trainer, tabular_dm
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from vtss_lightning import TabularDataModule, VTSSCallback, VTSSError, VTSSTuner
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search.objective import balanced_loss
from vtss_lightning.search.objective import test_metrics as compute_test_metrics
from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings

EPOCHS = 2

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class UserModel(LinearModule):
    """A user's own module: one Linear layer, SGD, sized from the DataModule."""

    lr = 0.2

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


#: 120 vs 30 rows (3 features, 2 shifted by 1.2) and a 20 + 20-row test set.
make_dm = partial(
    tabular_dm, n_neg=120, n_pos=30, shift=1.2, shifted_columns=2, n_test=20, batch_size=64
)


def trainer(tmp_path, callbacks, **kwargs):
    kwargs.setdefault("max_epochs", EPOCHS)
    return quiet_trainer(
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
        log_every_n_steps=1,
        **kwargs,
    )


# --------------------------------------------------------------------------- callback


def test_callback_in_a_users_module_writes_report_and_trains_final_model(tmp_path, capsys):
    dm = make_dm()
    pl.seed_everything(0)
    model = UserModel()
    cb = VTSSCallback(ratios=[0, 1, 2], refit=True, folds=None)  # hold-out; outer fit trains
    tr = trainer(tmp_path, [cb])
    tr.fit(model, datamodule=dm)

    log_dir = tr.log_dir
    assert log_dir is not None and log_dir != str(tmp_path)  # a logger's version folder
    report = json.loads((tmp_path.joinpath(log_dir) / "vtss_report.json").read_text())
    assert (tmp_path.joinpath(log_dir) / "vtss_curve.png").stat().st_size > 1000

    gap = dm.class_gaps()[1]
    assert gap == 72
    assert [c["ratio"] for c in report["candidates"]] == [0.0, 1.0, 2.0]
    assert [c["sizes"] for c in report["candidates"]] == [{"pos": 0}, {"pos": 72}, {"pos": 144}]
    assert all(math.isfinite(c["val_balanced_loss"]) for c in report["candidates"])
    best = min(report["candidates"], key=lambda c: c["val_balanced_loss"])
    assert report["selected_ratio"] == best["ratio"]
    assert report["selected_sizes"] == best["sizes"]
    assert set(report["test_metrics"]) >= {"balanced_log_loss", "balanced_accuracy", "auprc"}
    numbers = {k: v for k, v in report["test_metrics"].items() if k != "positive_class"}
    assert all(math.isfinite(v) for v in numbers.values())
    assert report["test_metrics"]["positive_class"] == "pos"  # the minority (30 of 150)
    assert report["timing"]["search_seconds"] > 0 and report["timing"]["final_fit_seconds"] > 0
    assert report["config"]["model"] == "UserModel"
    assert report["config"]["strategy"] == "auto"  # the default

    # the DataModule trains the final model at the selected size
    assert dm.synthetic_sizes == cb.result.final_index_sizes
    assert {str(dm.class_names[k]): m for k, m in dm.synthetic_sizes.items()} == best["sizes"]

    # the outer model started from the same weights as the candidates and saw the same
    # rows, so it reproduces the selected candidate's validation loss
    final = balanced_loss(model, dm.holdout.x_val, dm.holdout.y_val, dm.num_classes)
    assert final == pytest.approx(best["val_balanced_loss"], rel=1e-5, abs=1e-7)

    # the test metrics are those of the final model, with the minority class as positive
    expected = compute_test_metrics(model, dm.x_test, dm.y_test, dm.num_classes, positive=1)
    assert report["test_metrics"] == pytest.approx({**expected, "positive_class": "pos"})
    out = capsys.readouterr().out
    assert len(progress_lines(out)) == 3
    assert "VTSS report written to" in out


def test_same_seed_same_report_and_logger_false_writes_to_root(tmp_path):
    reports = []
    for run in range(2):
        root = tmp_path / f"run{run}"
        dm = make_dm(n_test=0)
        pl.seed_everything(0)
        model = UserModel()
        tr = trainer(root, [VTSSCallback(ratios=[0, 1, 2], verbose=False)], logger=False)
        tr.fit(model, datamodule=dm)
        path = root / "vtss_report.json"  # no logger: default_root_dir
        assert path.exists() and (root / "vtss_curve.png").exists()
        reports.append(json.loads(path.read_text()))
    a, b = reports
    assert "test_metrics" not in a  # no test data, no test metrics
    assert [c["val_balanced_loss"] for c in a["candidates"]] == [
        c["val_balanced_loss"] for c in b["candidates"]
    ]
    assert a["selected_ratio"] == b["selected_ratio"]
    assert a["selected_sizes"] == b["selected_sizes"]
    # different sizes give different losses (the comparison above can fail)
    losses = [c["val_balanced_loss"] for c in a["candidates"]]
    assert len(set(losses)) == 3


def test_resumed_fit_restores_the_result_without_searching(tmp_path, capsys):
    ckpt_dir = tmp_path / "ckpt"
    dm = make_dm(n_test=0)
    pl.seed_everything(0)
    first = VTSSCallback(ratios=[0, 1, 2])
    tr = trainer(tmp_path, [first, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)], logger=False)
    tr.fit(UserModel(), datamodule=dm)
    assert len(progress_lines(capsys.readouterr().out)) == 3
    ckpt = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert any("VTSSCallback" in str(k) for k in ckpt["callbacks"])

    dm2 = make_dm(n_test=0)
    second = VTSSCallback(ratios=[0, 1, 2])
    tr2 = trainer(tmp_path / "resume", [second], logger=False, max_epochs=EPOCHS + 1)
    tr2.fit(UserModel(), datamodule=dm2, ckpt_path=str(ckpt_dir / "last.ckpt"))
    out = capsys.readouterr().out
    assert progress_lines(out) == []
    assert second.result is not None
    assert dm2.synthetic_sizes == first.result.final_index_sizes
    assert dm2.trains_on_all_rows == (first.result.final_rows == "all")
    assert second.result.selected_sizes == first.result.selected_sizes
    assert [c.val_balanced_loss for c in second.result.candidates] == [
        c.val_balanced_loss for c in first.result.candidates
    ]
    assert (tmp_path / "resume" / "vtss_report.json").exists()


def test_state_dict_round_trip_skips_search(tmp_path, capsys):
    dm = make_dm(n_test=0)
    first = VTSSCallback(ratios=[0, 2], verbose=False)
    tr = trainer(tmp_path / "a", [first], logger=False, max_epochs=1)
    tr.fit(UserModel(), datamodule=dm)
    state = first.state_dict()
    json.dumps(state)  # plain data, safe in a checkpoint

    second = VTSSCallback(ratios=[0, 2])
    second.load_state_dict(state)
    dm2 = make_dm(n_test=0)
    tr2 = trainer(tmp_path / "b", [second], logger=False, max_epochs=1)
    tr2.fit(UserModel(), datamodule=dm2)
    assert progress_lines(capsys.readouterr().out) == []
    assert dm2.synthetic_sizes == first.result.final_index_sizes
    empty = VTSSCallback()
    empty.load_state_dict({"result": None})
    assert empty.result is None


def test_finetune_strategy_scores_every_candidate(tmp_path):
    dm = make_dm(n_test=0)
    pl.seed_everything(0)
    cb = VTSSCallback(ratios=[0, 1, 2], strategy="finetune", finetune_fraction=0.5, verbose=False)
    tr = trainer(tmp_path, [cb], logger=False)
    tr.fit(UserModel(), datamodule=dm)
    result = cb.result
    assert [c.ratio for c in result.candidates] == [0.0, 1.0, 2.0]
    assert all(c.status == "ok" and math.isfinite(c.val_balanced_loss) for c in result.candidates)
    assert result.config["strategy"] == "finetune"
    assert dm.synthetic_sizes == result.final_index_sizes
    assert (
        json.loads((tmp_path / "vtss_report.json").read_text())["config"]["strategy"] == "finetune"
    )


def test_balanced_data_through_the_callback(tmp_path):
    dm = make_dm(n_neg=40, n_pos=40, n_test=0)
    cb = VTSSCallback(ratios=[0, 1, 2], verbose=False)
    tr = trainer(tmp_path, [cb], logger=False, max_epochs=1)
    tr.fit(UserModel(), datamodule=dm)
    report = json.loads((tmp_path / "vtss_report.json").read_text())
    assert report["selected_sizes"] == {}
    assert any("no synthetic rows" in n for n in report["diagnostics"]["notes"])
    _, y = dm.training_tensors()
    assert len(y) == sum(dm.holdout.class_counts)


def test_callback_needs_a_vtss_datamodule(tmp_path):
    x = torch.randn(20, 3)
    y = torch.randint(0, 2, (20,))
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    tr = trainer(tmp_path, [VTSSCallback(ratios=[0, 1])], logger=False, max_epochs=1)
    with pytest.raises(VTSSError, match="SyntheticAugmentationDataModule"):
        tr.fit(UserModel(3, 2), train_dataloaders=loader)

    class PlainDM(pl.LightningDataModule):
        def train_dataloader(self):
            return loader

    tr = trainer(tmp_path, [VTSSCallback(ratios=[0, 1])], logger=False, max_epochs=1)
    with pytest.raises(VTSSError, match="datamodule"):
        tr.fit(UserModel(3, 2), datamodule=PlainDM())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"strategy": "bayes"}, "unknown strategy"), ({"folds": 1}, "folds")],
)
def test_callback_argument_errors(kwargs, match):
    with pytest.raises(VTSSError, match=match):
        VTSSCallback(**kwargs)


# --------------------------------------------------------------------------- tuner


def test_tuner_leaves_the_model_untouched_and_sets_sizes():
    dm = make_dm(n_test=0)
    model = TabularClassifier(n_features=3, num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuner = VTSSTuner(
        {"max_epochs": 1, "accelerator": "cpu", "devices": 1}, ratios=[0, 1, 2], verbose=False
    )
    result = tuner.search(model, dm)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert dm.synthetic_sizes == result.final_index_sizes
    assert len(result.candidates) == 3
    assert all(math.isfinite(c.val_balanced_loss) for c in result.candidates)
    assert result.config["model"] == "TabularClassifier"


def test_tuner_builds_a_lazy_model_from_the_data():
    dm = make_dm(n_test=0)
    model = TabularClassifier()  # no width given: read from the DataModule
    result = VTSSTuner({"max_epochs": 1}, ratios=[0, 1], verbose=False).search(model, dm)
    assert model.net is not None and model.hparams.n_features == dm.n_features == 3
    assert len(result.candidates) == 2


def test_tuner_with_absolute_sizes_by_class_label(tmp_path):
    dm = make_dm(n_test=0)
    tuner = VTSSTuner({"max_epochs": 1}, sizes=[{"pos": 40}, {"pos": 10}], verbose=False)
    result = tuner.search(TabularClassifier(), dm)
    assert [c.sizes for c in result.candidates] == [{"pos": 10}, {"pos": 40}]
    assert all(c.ratio is None for c in result.candidates)
    assert dm.synthetic_sizes == result.final_index_sizes
    assert result.selected_index_sizes in ({1: 10}, {1: 40})
    report, curve = result.write(tmp_path)  # the curve falls back to row counts
    assert curve.stat().st_size > 1000
    with pytest.raises(VTSSError, match="not in the data"):
        VTSSTuner({"max_epochs": 1}, sizes=[{"maybe": 3}], verbose=False).search(
            TabularClassifier(), make_dm(n_test=0)
        )


def test_tuner_rejects_unknown_trainer_arguments():
    with pytest.raises(VTSSError, match="unsupported trainer argument"):
        VTSSTuner({"max_epochs": 1, "strategy": "ddp_spawn_everything"})


# --------------------------------------------------------------------------- scorer


def test_retrain_scorer_is_reproducible_isolated_and_keeps_the_template(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the inner Trainers must not write anything
    dm = make_dm(n_test=0)
    dm.setup()
    template = UserModel(dm.n_features, dm.num_classes)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    settings = TrainerSettings.from_kwargs(
        {"max_epochs": EPOCHS, "accelerator": "cpu", "devices": 1}
    )
    scorer = RetrainScorer(template, settings, seed=3)
    dm.prepare_pool({1: 72})
    scorer.begin_split(dm)
    rng_state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = scorer.score(dm, {1: 36})
        b = scorer.score(dm, {1: 0})
        c = scorer.score(dm, {1: 36})
    assert a == c  # same sizes, same start, same seed: bit-identical
    assert a != b
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    assert all(torch.equal(before[k], v) for k, v in template.state_dict().items())
    assert list(tmp_path.iterdir()) == []


def test_settings_from_outer_trainer_copy_budget_and_device(tmp_path):
    tr = trainer(tmp_path, [], max_epochs=7, gradient_clip_val=0.5, logger=False)
    s = TrainerSettings.from_trainer(tr)
    assert s.kwargs["max_epochs"] == 7
    assert s.kwargs["accelerator"] == "cpu"
    assert s.kwargs["gradient_clip_val"] == 0.5
    assert s.budget(0.3) == {"max_epochs": 3}
    inner = s.build()
    assert inner.logger is None and inner.checkpoint_callback is None
    assert inner.max_epochs == 7
    assert re.search(r"cpu", str(inner.strategy.root_device))


def test_tuner_settings_resolve_one_cpu_device_by_default():
    settings = TrainerSettings.from_kwargs({"accelerator": "cpu", "max_epochs": 2})
    assert settings.device() == torch.device("cpu")
    assert settings.kwargs["devices"] == 1
    assert settings.build().num_devices == 1


def test_tg_grid_on_the_paper_linear_design_reports_asymmetry_with_finite_gqs(
    tmp_path, tmp_trainer
):
    pl.seed_everything(0)
    dm = TabularDataModule(dataset="paper_linear", scale=False)
    cb = VTSSCallback(grid="tg", verbose=False)
    trainer = tmp_trainer(max_epochs=1, callbacks=[cb])
    trainer.fit(TabularClassifier(), datamodule=dm)
    tg = cb.result.diagnostics["tg"]
    assert tg["regime"] == "local asymmetry"
    assert tg["gqs"] is not None and math.isfinite(tg["gqs"])
    assert tg["test"] == "calibrated" and tg["statistic"] > tg["cutoff"]
    assert tg["t_sym"] > tg["chi2_cutoff"]  # the paper's chi2 test rejects too
    searched = [c["ratio"] for c in cb.result.to_dict()["candidates"]]
    assert searched == sorted(tg["candidate_ratios"])
    assert json.loads((tmp_path / "vtss_report.json").read_text())["diagnostics"]["tg"]["regime"]


def test_tg_grid_rejects_explicit_candidates():
    with pytest.raises(VTSSError, match="tg"):
        VTSSCallback(grid="tg", ratios=[0, 1])
    with pytest.raises(VTSSError, match="grid"):
        VTSSCallback(grid="wide")
