"""VTSSCallback added to an existing Lightning project, as a user would.

Both Lightning packages (``lightning.pytorch`` and ``pytorch_lightning``), the user's
own module, ModelCheckpoint, EarlyStopping, loggers, ``test``/``predict`` and resume.
"""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import progress_lines, tabular_dm
from torch import nn

from vtss_lightning import VTSSCallback, VTSSTuner
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search.loggers import log_figure

PACKAGES = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(importlib.util.find_spec(name.split(".")[0]) is None, reason=name),
    )
    for name in ("lightning.pytorch", "pytorch_lightning")
]
RATIOS = [0.0, 1.0, 2.0]


def user_module_class(L):
    """A user's own LightningModule of package ``L``, sized in ``configure_model`` from
    ``self.trainer.datamodule`` (the README's recipe), logging ``val_loss``."""

    class UserMLP(L.LightningModule):
        def __init__(self, lr: float = 0.05):
            super().__init__()
            self.lr = lr
            self.net: nn.Module | None = None
            self.seen_sizes: list[dict] = []

        def configure_model(self):
            if self.net is None:
                dm = self.trainer.datamodule
                self.seen_sizes.append(dict(dm.synthetic_sizes))
                torch.manual_seed(0)
                self.net = nn.Sequential(
                    nn.Linear(dm.n_features, 8), nn.ReLU(), nn.Linear(8, dm.num_classes)
                )

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y), prog_bar=False)

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.lr)

    return UserMLP


def make_dm(seed: int = 0):
    return tabular_dm(120, 30, n_test=40, seed=seed, batch_size=32)


def trainer_of(L, root: Path, **kwargs):
    from importlib import import_module

    callbacks_mod = import_module(f"{L.__name__}.callbacks")
    loggers_mod = import_module(f"{L.__name__}.loggers")
    checkpoint = callbacks_mod.ModelCheckpoint(monitor="val_loss", save_last=True)
    stopping = callbacks_mod.EarlyStopping(monitor="val_loss", patience=1)
    vtss = kwargs.pop("vtss", None) or VTSSCallback(ratios=RATIOS, progress=False, folds=None)
    trainer = L.Trainer(
        max_epochs=kwargs.pop("max_epochs", 4),
        accelerator="cpu",
        default_root_dir=str(root),
        logger=[loggers_mod.CSVLogger(str(root), name="csv")],
        callbacks=[vtss, checkpoint, stopping, *kwargs.pop("callbacks", [])],
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    return trainer, vtss, checkpoint, stopping


@pytest.mark.parametrize("package", PACKAGES)
def test_an_existing_lightning_script_runs_fit_test_predict_and_resume(tmp_path, package):
    L = importlib.import_module(package)
    dm = make_dm()
    model = user_module_class(L)()
    trainer, vtss, checkpoint, stopping = trainer_of(L, tmp_path / "run")
    trainer.fit(model, datamodule=dm)

    # the search ran; every candidate fit saw the DataModule with its own sizes
    assert vtss.result is not None and len(vtss.result.candidates) == len(RATIOS)
    assert vtss.result.selected_index_sizes == dm.synthetic_sizes
    # the user's checkpoints hold the final model, best and last
    assert Path(checkpoint.best_model_path).is_file()
    assert Path(checkpoint.last_model_path).is_file()
    assert trainer.global_step > 0 and "val_loss" in trainer.callback_metrics
    # the user's logger has the validation metric and the VTSS curve and selection
    metrics_csv = next((tmp_path / "run" / "csv").rglob("metrics.csv"))
    header = next(csv.reader(metrics_csv.open()))
    assert {"val_loss", "vtss/val_balanced_loss", "vtss/selected_ratio"} <= set(header)
    # test and predict work with only the DataModule
    (tested,) = trainer.test(datamodule=dm, verbose=False)
    assert "test_loss" in tested
    predictions = trainer.predict(model, datamodule=dm)
    assert sum(len(p) for p in predictions) == len(dm.y_test)

    # resuming from the last checkpoint neither searches nor trains again
    steps = trainer.global_step
    again, vtss2, _, _ = trainer_of(L, tmp_path / "run")
    model2 = user_module_class(L)()
    again.fit(model2, datamodule=make_dm(), ckpt_path=checkpoint.last_model_path)
    assert again.global_step == steps
    assert vtss2.result.selected_ratio == vtss.result.selected_ratio
    assert model2.seen_sizes == [dm.synthetic_sizes]  # the final model only: no candidate fit


@pytest.mark.parametrize("package", PACKAGES)
def test_tuner_accepts_either_packages_module(package):
    L = importlib.import_module(package)
    dm = make_dm()
    result = VTSSTuner(
        {"max_epochs": 2, "accelerator": "cpu"}, ratios=RATIOS, verbose=False
    ).search(user_module_class(L)(), dm)
    assert len(result.candidates) == len(RATIOS) and result.selected_ratio in RATIOS


@pytest.mark.parametrize("package", PACKAGES)
def test_builtin_models_train_under_either_package(tmp_path, package):
    L = importlib.import_module(package)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[VTSSCallback(ratios=RATIOS, progress=False, verbose=False)],
    )
    dm = make_dm()
    trainer.fit(TabularClassifier(), datamodule=dm)
    report = json.loads((tmp_path / "vtss_report.json").read_text())
    assert report["test_metrics"]["balanced_log_loss"] > 0


class CountingCallback:
    """A user's callback that shapes training: records every fit it took part in."""

    fits: list[int] = []


def test_candidates_get_the_callbacks_that_shape_training(tmp_path):
    import pytorch_lightning as pl

    class Recorder(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            CountingCallback.fits.append(trainer.current_epoch)

    CountingCallback.fits.clear()
    trainer, vtss, checkpoint, stopping = trainer_of(
        pl, tmp_path, callbacks=[Recorder()], max_epochs=30
    )
    trainer.fit(user_module_class(pl)(lr=0.2), datamodule=make_dm())
    # one fit per candidate and the final one, each stopped by its own EarlyStopping copy
    assert len(CountingCallback.fits) == len(RATIOS) + 1
    assert all(epochs < 30 for epochs in CountingCallback.fits)
    assert stopping.stopped_epoch > 0  # the user's own EarlyStopping ran on the final fit
    # candidate fits never wrote checkpoints of their own
    assert len(list(Path(tmp_path).rglob("*.ckpt"))) == 2  # best and last of the final fit


def test_candidate_callbacks_list_overrides_the_rule(tmp_path):
    import pytorch_lightning as pl

    CountingCallback.fits.clear()

    class Recorder(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            CountingCallback.fits.append(trainer.current_epoch)

    vtss = VTSSCallback(ratios=RATIOS, progress=False, candidate_callbacks=[], folds=None)
    trainer, *_ = trainer_of(pl, tmp_path, vtss=vtss, callbacks=[Recorder()], max_epochs=3)
    trainer.fit(user_module_class(pl)(), datamodule=make_dm())
    assert len(CountingCallback.fits) == 1  # the final fit only


def test_refit_false_reuses_the_winner_and_a_resume_does_not_train_it(tmp_path):
    import pytorch_lightning as pl

    vtss = VTSSCallback(
        ratios=RATIOS, progress=False, refit=False, candidate_callbacks=[], folds=None
    )
    trainer, *_ = trainer_of(pl, tmp_path, vtss=vtss, max_epochs=3)
    model = TabularClassifier(hidden_dims=[8], optimizer="adamw", lr=0.01)
    trainer.fit(model, datamodule=make_dm())
    assert trainer.global_step == 0 and vtss.result.timing["final_fit_seconds"] == 0.0
    path = tmp_path / "reused.ckpt"
    trainer.save_checkpoint(path)
    vtss2 = VTSSCallback(
        ratios=RATIOS, progress=False, refit=False, candidate_callbacks=[], folds=None
    )
    again, *_ = trainer_of(pl, tmp_path / "again", vtss=vtss2, max_epochs=3)
    again.fit(
        TabularClassifier(hidden_dims=[8], optimizer="adamw", lr=0.01),
        datamodule=make_dm(),
        ckpt_path=path,
    )
    assert again.global_step == 0


class _WandbLike:
    """Stands in for WandbLogger (the real one needs an account): ``log_image``."""

    def __init__(self):
        self.experiment, self.figures = object(), []

    def log_image(self, key, images):
        self.figures.append((key, len(images)))


class _MLflowLike:
    """Stands in for MLFlowLogger (the real one needs a server): ``run_id`` + ``log_figure``."""

    def __init__(self):
        self.run_id, self.figures = "run-1", []
        figures = self.figures

        class Client:
            def log_figure(self, run_id, figure, artifact_file):
                figures.append((run_id, artifact_file))

        self.experiment = Client()


def test_the_curve_figure_goes_through_each_loggers_own_api():
    import matplotlib.pyplot as plt

    wandb, mlflow = _WandbLike(), _MLflowLike()
    assert log_figure(wandb, "vtss/curve", plt.figure())
    assert log_figure(mlflow, "vtss/curve", plt.figure())
    assert not log_figure(object(), "vtss/curve", plt.figure())  # nothing to send it through
    plt.close("all")
    assert wandb.figures == [("vtss/curve", 1)]
    assert mlflow.figures == [("run-1", "vtss_curve.png")]


def test_tensorboard_logger_gets_the_figure(tmp_path):
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=TensorBoardLogger(str(tmp_path)),
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[VTSSCallback(ratios=RATIOS, progress=False, verbose=False)],
    )
    trainer.fit(TabularClassifier(), datamodule=make_dm())
    events = list(Path(tmp_path).rglob("events.out.tfevents.*"))
    assert events and any(e.stat().st_size > 1000 for e in events)  # the image is in there


def test_verbose_search_prints_a_line_per_candidate(tmp_path, capsys):
    import pytorch_lightning as pl

    vtss = VTSSCallback(ratios=RATIOS, progress=False, folds=None)
    trainer, *_ = trainer_of(pl, tmp_path, vtss=vtss)
    trainer.fit(user_module_class(pl)(), datamodule=make_dm())
    assert len(progress_lines(capsys.readouterr().out)) == len(RATIOS)


def _gloo_teardown_abort(done, root: Path, devices: int) -> bool:
    """A worker killed by gloo's "terminate called without an active exception" while
    the interpreter exits, after every rank finished fit (the report seen by all):
    torch's process-group teardown, seen once in CI, not this package's behaviour."""
    finished = all((root / f"report_seen-{r}").exists() for r in range(devices))
    return done.returncode != 0 and finished and "terminate called without" in done.stderr


def test_two_cpu_devices_search_once_and_match_one_device(tmp_path):
    """devices=2 with ddp_spawn (gloo): one search (on rank 0, its validated candidates'
    metrics not waiting for rank 1), every rank leaving fit after the report is
    written, and the same selection, losses and test metrics as on one device."""
    import subprocess
    import sys

    script = Path(__file__).with_name("_ddp_run.py")
    reports, outputs = [], []
    for devices, strategy in ((1, "auto"), (2, "ddp_spawn")):
        for attempt in range(2):
            root = tmp_path / f"d{devices}-{attempt}"
            done = subprocess.run(
                [sys.executable, str(script), str(root), str(devices), strategy],
                capture_output=True,
                text=True,
                timeout=300,
            )
            if not _gloo_teardown_abort(done, root, devices):
                break  # one retry only for gloo's abort at process exit, after a clean fit
        assert done.returncode == 0, done.stderr[-2000:]
        for rank in range(devices):
            assert (root / f"report_seen-{rank}").read_text() == "True"
        outputs.append(done.stdout)
        reports.append(json.loads((root / "vtss_report.json").read_text()))
    one, two = reports
    assert len(progress_lines(outputs[1])) == 3  # each candidate once: rank 0 searched alone
    assert two["selected_ratio"] == one["selected_ratio"]
    assert [c["val_balanced_loss"] for c in two["candidates"]] == pytest.approx(
        [c["val_balanced_loss"] for c in one["candidates"]], abs=1e-6
    )
    assert two["test_metrics"] == pytest.approx(one["test_metrics"], abs=1e-5)


CLI_CONFIG = """
trainer:
  max_epochs: 1
  default_root_dir: {root}
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  callbacks:
    - class_path: vtss_lightning.VTSSCallback
      init_args: {{ratios: [0.0, 1.0], progress: false, verbose: false}}
model:
  class_path: vtss_lightning.models.TabularClassifier
data:
  class_path: vtss_lightning.data.TabularDataModule
  init_args: {{dataset: breast_cancer}}
{vtss}
"""


def test_cli_takes_the_callback_from_trainer_callbacks(tmp_path):
    from vtss_lightning.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(CLI_CONFIG.format(root=tmp_path, vtss=""))
    main(["fit", "--config", str(config)])
    report = json.loads(next(tmp_path.rglob("vtss_report.json")).read_text())
    assert [c["ratio"] for c in report["candidates"]] == [0.0, 1.0]  # the listed callback's grid


def test_cli_refuses_the_callback_in_both_places(tmp_path, capsys):
    from vtss_lightning.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(CLI_CONFIG.format(root=tmp_path, vtss="vtss: {ratios: [0.0, 2.0]}"))
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(config)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vtss: error: VTSSCallback is configured twice")


LIGHTNING_CLI_CONFIG = """
trainer:
  max_epochs: 1
  default_root_dir: {root}
  enable_checkpointing: false
  enable_progress_bar: false
  logger:
    class_path: {package}.loggers.CSVLogger
    init_args: {{save_dir: {root}}}
  callbacks:
    - class_path: {package}.callbacks.LearningRateMonitor
model:
  class_path: vtss_lightning.models.TabularClassifier
data:
  class_path: vtss_lightning.data.TabularDataModule
  init_args: {{dataset: breast_cancer}}
vtss: {{ratios: [0.0, 1.0], folds: null, progress: false, verbose: false}}
"""


def test_cli_runs_a_config_written_for_lightning_pytorch(tmp_path):
    """A YAML of ``import lightning as L`` users (lightning.pytorch loggers and
    callbacks) runs on lightning.pytorch's Trainer; its logger gets the report."""
    pytest.importorskip("lightning")
    from vtss_lightning.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(LIGHTNING_CLI_CONFIG.format(root=tmp_path, package="lightning.pytorch"))
    main(["fit", "--config", str(config)])
    report = next(tmp_path.rglob("vtss_report.json"))
    assert (report.parent / "metrics.csv").exists()  # the CSVLogger's own folder
    assert [c["ratio"] for c in json.loads(report.read_text())["candidates"]] == [0.0, 1.0]


def test_cli_picks_the_package_the_config_names(tmp_path):
    pytest.importorskip("lightning")
    import lightning.pytorch
    import pytorch_lightning

    from vtss_lightning import _lightning
    from vtss_lightning.cli import cli_package

    config = tmp_path / "c.yaml"
    config.write_text(LIGHTNING_CLI_CONFIG.format(root=tmp_path, package="lightning.pytorch"))
    assert cli_package(["fit", "--config", str(config)]) is lightning.pytorch
    assert cli_package(["fit", f"--config={config}"]) is lightning.pytorch
    plain = ["fit", "--trainer.callbacks+=pytorch_lightning.callbacks.LearningRateMonitor"]
    assert cli_package(plain) is pytorch_lightning
    assert cli_package(["fit", "--config", str(tmp_path / "missing.yaml")]) is _lightning.DEFAULT


def test_cli_refuses_a_config_that_mixes_the_packages(tmp_path, capsys):
    pytest.importorskip("lightning")
    from vtss_lightning.cli import main

    config = tmp_path / "c.yaml"
    text = LIGHTNING_CLI_CONFIG.format(root=tmp_path, package="lightning.pytorch")
    config.write_text(text.replace("lightning.pytorch.callbacks", "pytorch_lightning.callbacks"))
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(config)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "vtss: error: the config names classes of both lightning.pytorch and "
        "pytorch_lightning; a Trainer takes one package's callbacks and loggers: use one of them"
    ]


@pytest.mark.parametrize("api", ["callback", "tuner"])
def test_the_final_fit_draws_what_it_would_without_the_search(tmp_path, api):
    """The search consumes none of the user's randomness: after ``seed_everything`` the
    final fit (dropout masks here) equals a plain fit at the chosen size."""
    import pytorch_lightning as pl

    def model():
        return TabularClassifier(hidden_dims=[16], dropout=0.5, optimizer="adamw", lr=1e-2)

    def plain(dm, callbacks=()):
        trainer = pl.Trainer(
            max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, default_root_dir=tmp_path, callbacks=list(callbacks),
        )  # fmt: skip
        return trainer

    pl.seed_everything(7)
    net = model()
    dm = make_dm()
    search = {"ratios": [0.5, 1], "folds": None, "verbose": False, "progress": False}
    if api == "callback":
        plain(dm, [VTSSCallback(**search)]).fit(net, datamodule=dm)
    else:
        VTSSTuner({"max_epochs": 3}, **search).search(net, dm)
        plain(dm).fit(net, datamodule=dm)
    pl.seed_everything(7)
    alone = model()
    dm_alone = make_dm()
    dm_alone.setup()
    dm_alone.set_synthetic_sizes(dm.synthetic_sizes)
    plain(dm_alone).fit(alone, datamodule=dm_alone)
    for (name, got), want in zip(
        net.state_dict().items(), alone.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, want, msg=name)
