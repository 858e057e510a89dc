"""Every budget of the outer trainer reaches each candidate's Trainer (or is refused).

``max_time`` is a budget per candidate fit (each candidate gets the final fit's
budget); the stacked strategies cannot honour it and fall back to ``retrain``.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
import torch.nn.functional as F
from helpers import LinearModule, quiet_trainer, tabular_dm
from pytorch_lightning.callbacks import EarlyStopping, Timer
from test_cli import REPO, Run, find_one, write_table  # tests/ is on sys.path

from vtss_lightning import VTSSCallback, VTSSError, VTSSTuner
from vtss_lightning.search.strategies import TrainerSettings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: A candidate still training after this many seconds ignored its max_time.
WATCHDOG_S = 45.0


class Watched(LinearModule):
    """Fails its fit, instead of hanging the test, once it trains past the watchdog."""

    started: float | None = None

    def on_train_start(self):
        self.started = time.monotonic()

    def training_step(self, batch, batch_idx):
        assert time.monotonic() - self.started < WATCHDOG_S, "a fit ignored max_time"
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


def outer(tmp_path, callbacks, **kwargs):
    return quiet_trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
        **kwargs,
    )


def inner_of(settings: TrainerSettings):
    return settings.build(module=LinearModule(3, 2))


def timer_seconds(trainer) -> float | None:
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    return timers[0]._duration if timers else None


# ------------------------------------------------------------------ unit: the settings


def test_every_budget_of_the_outer_trainer_reaches_the_candidate_trainer(tmp_path):
    tr = outer(
        tmp_path,
        [EarlyStopping("val_loss", patience=2)],
        max_epochs=-1,
        max_time="00:00:01:30",
        min_epochs=2,
        min_steps=5,
        val_check_interval=0.5,
        check_val_every_n_epoch=2,
    )
    s = TrainerSettings.from_trainer(tr)
    assert s.kwargs["max_time"] == timedelta(seconds=90)
    assert s.kwargs["min_epochs"] == 2 and s.kwargs["min_steps"] == 5
    assert s.describe()["max_time"] == timedelta(seconds=90)
    s.callbacks = [EarlyStopping("val_loss", patience=2)]  # as VTSSCallback sets them
    inner = inner_of(s)
    assert timer_seconds(inner) == 90.0
    assert inner.max_epochs == -1 and inner.min_epochs == 2 and inner.min_steps == 5
    assert inner.val_check_interval == 0.5 and inner.check_val_every_n_epoch == 2


def test_a_users_timer_callback_is_the_same_budget_and_defaults_add_nothing(tmp_path):
    s = TrainerSettings.from_trainer(outer(tmp_path, [Timer(duration={"seconds": 7})]))
    assert timer_seconds(inner_of(s)) == 7.0
    plain = TrainerSettings.from_trainer(outer(tmp_path, [], max_epochs=3))
    assert not {"max_time", "min_epochs", "min_steps"} & set(plain.kwargs)  # fingerprint kept
    assert timer_seconds(inner_of(plain)) is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("00:00:00:05", 5), ({"minutes": 1}, 60), (timedelta(seconds=3), 3)],
)
def test_tuner_settings_take_max_time_and_min_limits(value, seconds):
    s = TrainerSettings.from_kwargs(
        {"max_epochs": -1, "max_time": value, "min_steps": 4, "val_check_interval": 0.5}
    )
    inner = inner_of(s)
    assert timer_seconds(inner) == seconds
    assert inner.min_steps == 4
    assert s.budget(0.5)["max_time"] == timedelta(seconds=seconds / 2)  # finetune's share


@pytest.mark.parametrize("value", ["ten seconds", "00:00:00:00", 12])
def test_a_bad_or_zero_max_time_is_refused_in_one_line(value):
    with pytest.raises(VTSSError, match=r"^max_time=") as info:
        TrainerSettings.from_kwargs({"max_time": value})
    assert "\n" not in str(info.value)


# ------------------------------------------------------------- end to end: bounded fits


@pytest.mark.parametrize("strategy", ["retrain", "parallel"])
def test_max_time_bounds_every_candidate_fit_with_no_epoch_limit(tmp_path, strategy):
    dm = tabular_dm(120, 30, batch_size=16)
    cb = VTSSCallback(ratios=[0, 1], folds=None, strategy=strategy, verbose=False)
    tr = outer(tmp_path, [cb], max_epochs=-1, max_time={"seconds": 2})
    t0 = time.monotonic()
    tr.fit(Watched(), datamodule=dm)
    assert time.monotonic() - t0 < 60  # two candidates and the final fit, ~2 s each
    result = cb.result
    assert result.config["trainer"]["max_time"] == "0:00:02"
    assert all(c.seconds < 20 for c in result.candidates)
    if strategy == "parallel":  # the stacked loop counts steps: retrain, with the reason
        assert any("max_time" in n for n in result.diagnostics["notes"])


def test_the_tuner_honours_max_time_too():
    dm = tabular_dm(120, 30, batch_size=16)
    tuner = VTSSTuner(
        {"accelerator": "cpu", "max_epochs": -1, "max_time": "00:00:00:01"},
        ratios=[0, 1],
        folds=None,
        verbose=False,
    )
    t0 = time.monotonic()
    tuner.search(Watched(3, 2), dm, progress_bar=False)
    assert time.monotonic() - t0 < 40


# ------------------------------------------------------------------- the real command


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("budgets")
    write_table(base / "train.csv", 90, 30, seed=0)
    started = {}
    try:
        for strategy in ("retrain", "parallel"):
            args = ["fit", "--config", str(REPO / "configs" / "csv.yaml")]
            args += ["--data.init_args.path", str(base / "train.csv")]
            args += ["--data.init_args.target", "label", "--vtss.ratios", "[0, 1]"]
            args += ["--vtss.folds", "null"]  # hold-out: one fit per candidate
            args += ["--vtss.strategy", strategy, "--trainer.max_epochs", "-1"]
            args += ["--trainer.max_time", "00:00:00:02"]
            args += ["--trainer.default_root_dir", str(base / strategy)]
            started[strategy] = (Run(args, base, base / strategy), time.monotonic())
        yield started
    finally:
        for run, _ in started.values():
            run.kill()


@pytest.mark.parametrize("strategy", ["retrain", "parallel"])
def test_cli_max_time_with_no_epoch_limit_finishes_the_search(cli_runs, strategy):
    run, t0 = cli_runs[strategy]
    run.ok()
    assert time.monotonic() - t0 < 150  # import, three fits of ~2 s each, the report
    report = json.loads(find_one(run.root, "vtss_report.json").read_text())
    assert report["config"]["trainer"]["max_time"] == "0:00:02"
    assert all(c["seconds"] < 20 for c in report["candidates"])  # one ~2 s fit each
    fell_back = any("max_time" in n for n in report["diagnostics"]["notes"])
    assert fell_back == (strategy == "parallel")
