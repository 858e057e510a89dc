"""Interruption, resume and determinism with real ``vtss`` processes.

A search runs inside ``on_fit_start``, before any checkpoint exists; the progress
file (``vtss_progress.jsonl``) is what lets a rerun of a ``kill -9``-ed command skip
the finished candidates. Every run here is a fresh ``vtss fit`` process on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from helpers import progress_lines
from test_cli import vtss_executable  # tests/ is on sys.path under pytest

from vtss_lightning import TabularDataModule, VTSSTuner
from vtss_lightning.search.progress import PROGRESS_NAME, ProgressStore
from vtss_lightning.search.strategies import RetrainScorer

RATIOS = [0, 0.25, 0.5, 1, 1.5, 2, 3]
TIMEOUT_S = 300

CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 40
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: vtss_lightning.models.TabularClassifier
  init_args: {{hidden_dims: [16], optimizer: adamw, lr: 0.02}}
data:
  class_path: vtss_lightning.data.TabularDataModule
  init_args:
    path: {train}
    target: label
    test_path: {test}
    batch_size: 2048   # one step per epoch: cheap candidates
    generator: {{class_path: vtss_lightning.generators.SMOTEGenerator}}
vtss:
  ratios: {ratios}
  folds: null  # the hold-out: one progress line per finished fit
"""


def write_table(path: Path, n_no: int, n_yes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = n_no + n_yes
    frame = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    frame.loc[n_no:, ["a", "b"]] += 1.0
    frame["label"] = ["no"] * n_no + ["yes"] * n_yes
    frame.to_csv(path, index=False)


def start(config: Path, root: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args = [vtss_executable(), "fit", "--config", str(config)]
    args += ["--trainer.default_root_dir", str(root)]
    return subprocess.Popen(
        args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True
    )


def finish(proc: subprocess.Popen, log: Path) -> str:
    try:
        rc = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"vtss did not finish in {TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert rc == 0, f"vtss exited {rc}:\n{text[-3000:]}"
    return text


def newest(root: Path, name: str) -> Path:
    return max(root.rglob(name), key=lambda p: p.stat().st_mtime)


def records(path: Path) -> int:
    """Complete candidate records in a progress file (a torn last line does not count)."""
    n = 0
    for line in path.read_text().split("\n")[1:]:
        try:
            json.loads(line)["candidate"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        n += 1
    return n


def without_timing(report: dict) -> dict:
    out = dict(report)
    out.pop("timing")
    out["candidates"] = [{k: v for k, v in c.items() if k != "seconds"} for c in out["candidates"]]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, a second fresh run, and a run killed mid-search + rerun."""
    base = tmp_path_factory.mktemp("resume")
    train, test = base / "train.csv", base / "test.csv"
    write_table(train, 300, 40, seed=0)
    write_table(test, 50, 50, seed=1)
    config = base / "config.yaml"
    config.write_text(CONFIG.format(train=train, test=test, ratios=RATIOS))
    roots = {name: base / name for name in ("full", "again", "killed")}
    procs = {name: start(config, root, base / f"{name}.log") for name, root in roots.items()}
    try:
        progress = roots["killed"] / PROGRESS_NAME
        deadline = time.monotonic() + TIMEOUT_S
        while not (progress.exists() and records(progress) >= 2):
            assert procs["killed"].poll() is None, (base / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the search never wrote two candidates"
            time.sleep(0.02)
        procs["killed"].kill()  # SIGKILL: no cleanup, no checkpoint
        procs["killed"].wait()
        done = records(progress)
        killed_log = (base / "killed.log").read_text()
        resumed = start(config, roots["killed"], base / "resumed.log")
        out = {name: finish(procs[name], base / f"{name}.log") for name in ("full", "again")}
        out["resumed"] = finish(resumed, base / "resumed.log")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    # each run logs into a new lightning_logs/version_N; the rerun's report is the newest
    reports = {
        name: json.loads(newest(roots[key], "vtss_report.json").read_text())
        for name, key in (("full", "full"), ("again", "again"), ("resumed", "killed"))
    }
    return {
        "done": done,
        "killed_log": killed_log,
        "out": out,
        "reports": reports,
        "progress": progress,
    }


def test_killed_search_resumes_without_retraining_finished_candidates(runs):
    done = runs["done"]
    assert 2 <= done < len(RATIOS), "the kill must land in the middle of the search"
    assert "VTSS report written" not in runs["killed_log"]
    resumed = runs["out"]["resumed"]
    assert f"{done} fit(s) already done" in resumed
    # only the unfinished candidates are trained again
    assert len(progress_lines(resumed)) == len(RATIOS) - done
    assert len(progress_lines(runs["out"]["full"])) == len(RATIOS)
    # the progress file is gone once the report is written
    assert not runs["progress"].exists()


def test_resumed_report_equals_the_uninterrupted_one(runs):
    full, resumed = runs["reports"]["full"], runs["reports"]["resumed"]
    assert [c["val_balanced_loss"] for c in resumed["candidates"]] == [
        c["val_balanced_loss"] for c in full["candidates"]
    ]
    assert without_timing(resumed) == without_timing(full)
    assert resumed["test_metrics"] == full["test_metrics"]  # same final model
    losses = [c["val_balanced_loss"] for c in full["candidates"]]
    assert len(set(losses)) == len(RATIOS)  # distinct: the comparison above can fail


def test_same_seed_gives_an_identical_report_in_fresh_processes(runs):
    a, b = runs["reports"]["full"], runs["reports"]["again"]
    assert without_timing(a) == without_timing(b)  # every loss to the last digit
    assert a["test_metrics"] == b["test_metrics"]
    assert set(a["timing"]) >= {"search_seconds", "final_fit_seconds", "peak_rss_mb"}


# ------------------------------------------------------------------ the Tuner


class Interrupt(BaseException):
    """Stands in for the process dying after some fits (KeyboardInterrupt-like)."""


def small_dm() -> TabularDataModule:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 3))
    x[120:] += 1.0
    y = np.array(["neg"] * 120 + ["pos"] * 30)
    return TabularDataModule.from_arrays(x, y, batch_size=64)


def tuner_model():
    from vtss_lightning.models import TabularClassifier

    pl.seed_everything(0)  # the Tuner builds the layers from the data, under this seed
    return TabularClassifier(hidden_dims=[8], optimizer="adamw", lr=0.05)


def test_tuner_resumes_from_its_progress_path(tmp_path, monkeypatch, capsys):
    path = tmp_path / "progress.jsonl"
    settings = {"max_epochs": 2, "accelerator": "cpu"}
    full = VTSSTuner(settings, ratios=RATIOS, folds=2, verbose=False).search(
        tuner_model(), small_dm()
    )
    calls = []
    original = RetrainScorer.score

    def dying(self, dm, sizes):
        if len(calls) == 5:
            raise Interrupt
        calls.append(sizes)
        return original(self, dm, sizes)

    monkeypatch.setattr(RetrainScorer, "score", dying)
    with pytest.raises(Interrupt):
        VTSSTuner(settings, ratios=RATIOS, folds=2).search(tuner_model(), small_dm(), path)
    assert len(path.read_text().splitlines()) == 1 + 5
    calls.clear()

    def counted(self, dm, sizes):
        calls.append(sizes)
        return original(self, dm, sizes)

    monkeypatch.setattr(RetrainScorer, "score", counted)
    capsys.readouterr()
    resumed = VTSSTuner(settings, ratios=RATIOS, folds=2).search(tuner_model(), small_dm(), path)
    assert "5 fit(s) already done" in capsys.readouterr().out
    assert len(calls) == 2 * len(RATIOS) - 5
    assert [c.fold_losses for c in resumed.candidates] == [c.fold_losses for c in full.candidates]
    assert resumed.selected_sizes == full.selected_sizes
    assert path.exists()  # the Tuner keeps its file; delete it to search afresh


def test_a_progress_file_from_another_configuration_is_ignored(tmp_path, capsys):
    path = tmp_path / PROGRESS_NAME
    store = ProgressStore(path, "key-a", verbose=False)
    store.put(0, 0, 0.5, 1.0)
    store.put(0, 1, float("nan"), 1.0)
    again = ProgressStore(path, "key-a")
    assert again.get(0, 0) == (0.5, 1.0)
    assert np.isnan(again.get(0, 1)[0])  # a failed fit is remembered as failed
    assert "2 fit(s) already done" in capsys.readouterr().out
    other = ProgressStore(path, "key-b")
    assert other.get(0, 0) is None
    assert "different search configuration" in capsys.readouterr().out
    assert json.loads(path.read_text().splitlines()[0])["fingerprint"] == "key-b"


def test_a_torn_last_line_is_dropped_and_appends_stay_valid(tmp_path):
    path = tmp_path / PROGRESS_NAME
    store = ProgressStore(path, "k", verbose=False)
    store.put(0, 0, 0.25, 1.0)
    with path.open("a") as fh:
        fh.write('{"split": 0, "candidate": 1, "lo')  # killed mid-write
    store = ProgressStore(path, "k", verbose=False)
    assert store.scores == {(0, 0): (0.25, 1.0)}
    store.put(0, 1, 0.125, 2.0)
    assert ProgressStore(path, "k", verbose=False).scores == {
        (0, 0): (0.25, 1.0),
        (0, 1): (0.125, 2.0),
    }


def test_changed_initial_weights_change_the_fingerprint():
    from vtss_lightning.search.config import SearchConfig
    from vtss_lightning.search.progress import search_fingerprint
    from vtss_lightning.search.strategies import TrainerSettings

    dm = small_dm()
    dm.setup()
    cfg, settings = SearchConfig(ratios=RATIOS), TrainerSettings({"max_epochs": 2})
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    torch.manual_seed(0)
    b = torch.nn.Linear(3, 2)
    key = search_fingerprint(cfg, dm, a, settings, RATIOS)
    assert key == search_fingerprint(cfg, dm, b, settings, RATIOS)
    with torch.no_grad():
        b.weight[0, 0] += 1e-6
    assert key != search_fingerprint(cfg, dm, b, settings, RATIOS)
    assert key != search_fingerprint(cfg, dm, a, TrainerSettings({"max_epochs": 3}), RATIOS)
    assert key != search_fingerprint(cfg, dm, a, settings, [0, 1])
