"""Interruption, resume and determinism with real ``vtss`` processes.

A search runs inside ``on_fit_start``, before any checkpoint exists; the progress
file (``vtss_progress-<search tag>.jsonl``) is what lets a rerun of a ``kill -9``-ed
command skip the finished candidates. The first runs here are fresh ``vtss fit``
processes on the CPU; then the Tuner, the progress file of one search among others,
and halving resumed from every kind of point a kill can leave.
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
from helpers import LinearModule, progress_lines, tabular_dm
from test_cli import vtss_executable  # tests/ is on sys.path under pytest

from vtss_lightning import TabularDataModule, VTSSCallback, VTSSTuner
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
  strategy: retrain  # one candidate at a time, so a kill lands between two of them
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


def progress_file(root: Path) -> Path | None:
    """The one search's progress file in ``root`` (its name carries the search's tag)."""
    found = sorted(root.glob(PROGRESS_NAME.replace("{search}", "*")))
    assert len(found) <= 1, found
    return found[0] if found else None


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
        deadline = time.monotonic() + TIMEOUT_S
        while (progress := progress_file(roots["killed"])) is None or records(progress) < 2:
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
    full = VTSSTuner(settings, ratios=RATIOS, folds=2, verbose=False, strategy="retrain").search(
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
        VTSSTuner(settings, ratios=RATIOS, folds=2, strategy="retrain").search(tuner_model(), small_dm(), path)
    assert len(path.read_text().splitlines()) == 1 + 5
    calls.clear()

    def counted(self, dm, sizes):
        calls.append(sizes)
        return original(self, dm, sizes)

    monkeypatch.setattr(RetrainScorer, "score", counted)
    capsys.readouterr()
    resumed = VTSSTuner(settings, ratios=RATIOS, folds=2, strategy="retrain").search(tuner_model(), small_dm(), path)
    assert "5 fit(s) already done" in capsys.readouterr().out
    assert len(calls) == 2 * len(RATIOS) - 5
    assert [c.fold_losses for c in resumed.candidates] == [c.fold_losses for c in full.candidates]
    assert resumed.selected_sizes == full.selected_sizes
    assert path.exists()  # the Tuner keeps its file; delete it to search afresh


def test_a_progress_file_from_another_configuration_is_ignored(tmp_path, capsys):
    path = tmp_path / "progress.jsonl"
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
    # ... and left as it is: the other search keeps its progress beside it
    assert other.path == tmp_path / "progress-key-b.jsonl"
    assert json.loads(path.read_text().splitlines()[0])["fingerprint"] == "key-a"
    assert ProgressStore(path, "key-a", verbose=False).get(0, 0) == (0.5, 1.0)


def test_a_torn_last_line_is_dropped_and_appends_stay_valid(tmp_path):
    store = ProgressStore(tmp_path / PROGRESS_NAME, "k", verbose=False)
    path = store.path
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


# ------------------------------------- one progress file per search, in one folder


def test_two_searches_in_one_folder_neither_read_nor_erase_each_others_progress(tmp_path):
    """Search B started while A ran in the same folder: B used to rewrite the header
    (erasing A's records), A went on appending under it, and B's rerun took A's loss."""
    a_key, b_key = "a" * 64, "b" * 64
    a = ProgressStore(tmp_path / PROGRESS_NAME, a_key, verbose=False)
    a.put(0, 0, 0.5, 1.0)
    b = ProgressStore(tmp_path / PROGRESS_NAME, b_key, verbose=False)  # B starts
    a.put(0, 4, 0.3704, 1.0)  # A goes on
    b.put(0, 0, 0.25, 1.0)
    assert a.path != b.path and a.path.parent == b.path.parent == tmp_path
    assert a_key[:16] in a.path.name and b_key[:16] in b.path.name
    # each rerun finds its own records and nothing of the other's
    assert ProgressStore(tmp_path / PROGRESS_NAME, b_key, verbose=False).scores == {
        (0, 0): (0.25, 1.0)
    }
    assert ProgressStore(tmp_path / PROGRESS_NAME, a_key, verbose=False).scores == {
        (0, 0): (0.5, 1.0),
        (0, 4): (0.3704, 1.0),
    }


def test_appends_of_another_search_to_one_file_are_never_read(tmp_path, capsys):
    """Two searches that opened one free ``progress_path`` at the same instant: the
    later header wins the file and the other search's appends land under it."""
    path = tmp_path / "progress.jsonl"
    a = ProgressStore(path, "key-a", verbose=False)
    path.unlink()  # B opens the path as if A had not written it yet
    ProgressStore(path, "key-b", verbose=False)
    a.put(0, 4, 0.3704, 1.0)  # A's fit, appended under B's header
    rerun = ProgressStore(path, "key-b")
    assert rerun.get(0, 4) is None and rerun.scores == {}
    assert "already done" not in capsys.readouterr().out


def callback_search(make_trainer, ratios: list[float], verbose: bool = True):
    """One ``trainer.fit`` with a VTSSCallback in ``make_trainer``'s default_root_dir."""
    dm = tabular_dm(120, 30, shift=1.2, shifted_columns=2, batch_size=64)
    pl.seed_everything(0)
    callback = VTSSCallback(ratios=ratios, folds=None, verbose=verbose, strategy="retrain")
    make_trainer(accelerator="cpu", devices=1, max_epochs=2, callbacks=[callback]).fit(
        LinearModule(), datamodule=dm
    )
    return callback.result


def test_callback_searches_in_one_root_dir_each_resume_their_own_progress(
    tmp_trainer, tmp_path, monkeypatch, capsys
):
    a_ratios, b_ratios = [0, 0.5, 1, 2], [0, 1, 1.5, 2]  # two searches: other candidates
    full = callback_search(tmp_trainer, a_ratios, verbose=False)
    assert progress_file(tmp_path) is None  # removed once the report was written
    original, calls = RetrainScorer.score, []

    def dying(self, dm, sizes):
        if len(calls) == 2:
            raise Interrupt
        calls.append(sizes)
        return original(self, dm, sizes)

    monkeypatch.setattr(RetrainScorer, "score", dying)
    with pytest.raises(Interrupt):
        callback_search(tmp_trainer, a_ratios)  # search A, killed after two fits
    monkeypatch.undo()
    a_file = progress_file(tmp_path)
    a_text = a_file.read_text()
    assert records(a_file) == 2
    other = callback_search(tmp_trainer, b_ratios)  # search B, same folder, to the end
    assert a_file.read_text() == a_text  # B neither erased nor appended to A's file
    assert progress_file(tmp_path) == a_file  # and removed only its own
    # B trained its own ratio 1 (A's second candidate was ratio 0.5)
    assert other.candidates[1].val_balanced_loss == full.candidates[2].val_balanced_loss
    capsys.readouterr()
    resumed = callback_search(tmp_trainer, a_ratios)  # A's rerun finds its two fits
    assert "2 fit(s) already done" in capsys.readouterr().out
    assert [c.val_balanced_loss for c in resumed.candidates] == [
        c.val_balanced_loss for c in full.candidates
    ]
    assert progress_file(tmp_path) is None


# -------------------------------------------------------------- halving, resumed

HALVING_RATIOS = [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3]  # 9 candidates: two rungs


def halving_summary(result) -> tuple:
    """What a resumed halving search must reproduce: losses, statuses, selection."""
    rows = [(c.ratio, c.val_balanced_loss, c.status) for c in result.candidates]
    return rows, result.selected_ratio, result.selected_sizes


def kill_points(lines: list[str]) -> dict[str, int]:
    """Prefixes of a finished search's record lines that a kill -9 can leave (records
    are appended and fsynced one by one): how many lines survive, by where it hit."""
    scores = [n for n, line in enumerate(lines) if '"loss"' in line]
    note = scores[2] - 1 if '"note"' in lines[scores[2] - 1] else scores[2]
    rung = next(n for n, line in enumerate(lines) if '"rung"' in line or '"loss"' in line)
    return {
        "during the first rung": rung,
        "before the first pruned candidate": scores[0] - 1 if scores[0] > 0 else 0,
        "between a status and its score": note,  # the status of the third pruned
        "after the first rung": scores[5] + 1,
        "while pruning the second rung": scores[6] + 1,
        "while training the survivor": scores[7] + 1,
    }


@pytest.mark.parametrize("strategy", ["halving", "parallel_halving"])
def test_a_killed_halving_search_resumes_with_the_same_schedule(tmp_path, strategy):
    settings = {"max_epochs": 4, "accelerator": "cpu"}
    tuner = VTSSTuner(settings, ratios=HALVING_RATIOS, strategy=strategy, verbose=False)
    path = tmp_path / "progress.jsonl"
    full = tuner.search(tuner_model(), small_dm(), path)
    statuses = [c.status.split(" after")[0] for c in full.candidates]
    assert statuses.count("ok") == 1 and "pruned at rung 2/3" in statuses  # two rungs ran
    header, *lines = path.read_text().splitlines()
    for where, n in kill_points(lines).items():
        killed = tmp_path / f"killed-{n}.jsonl"
        killed.write_text("\n".join([header, *lines[:n]]) + "\n")
        resumed = tuner.search(tuner_model(), small_dm(), killed)
        assert halving_summary(resumed) == halving_summary(full), where


def test_a_candidates_status_survives_a_resume(tmp_path):
    """A status the scorer recorded (e.g. "ok (retried at batch size 64)") is stored
    with the score, so the resumed report says it too."""
    from test_search import FakeScorer, make_dm, parabola

    from vtss_lightning.search.engine import SearchEngine

    class NotingScorer(FakeScorer):
        def score(self, dm, sizes):
            if sum(sizes.values()) == 0:
                self.statuses[self.current] = "ok (retried at batch size 64)"
            return super().score(dm, sizes)

        def score_many(self, dm, jobs):
            for i, sizes in jobs:
                self.current = i
                yield i, self.score(dm, sizes), 0.0

    path = tmp_path / "p.jsonl"
    first = SearchEngine([0, 1, 2], verbose=False).run(
        make_dm(), NotingScorer(parabola), ProgressStore(path, "key", verbose=False)
    )
    assert first.candidates[0].status == "ok (retried at batch size 64)"
    resumed = SearchEngine([0, 1, 2], verbose=False).run(
        make_dm(), FakeScorer(parabola), ProgressStore(path, "key", verbose=False)
    )
    assert [c.status for c in resumed.candidates] == [c.status for c in first.candidates]
