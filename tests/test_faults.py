"""``kill -9`` at chosen points of every strategy's search, then the same command again.

Each strategy (retrain, parallel, halving, parallel_halving, and retrain under 2-fold
validation) runs twice uninterrupted (the report must not change); then, for each
kill point, a run is killed with SIGKILL and the same command rerun, which must end
with the uninterrupted run's report: every candidate loss, pruning status,
selection and test metric to the last digit (only timing fields may differ).

Kill points count the records of the progress file (``vtss_progress*.jsonl``: one
line per finished fit, and a strategy's own notes) on disk when the process dies as
it starts the next write: after the first record, after a seeded random one, after
all but one, and after all of them with the final fit done, as the report is opened.
The runs are forked children of one process that imported the CLI
(``_kill_point.py``: the kill point is exact, and no run pays ~8 s of imports);
``test_resume.py`` kills a fresh ``vtss`` process.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _kill_point import progress_lines  # tests/ is on sys.path under pytest

HELPER = Path(__file__).with_name("_kill_point.py")
RUN_TIMEOUT_S = 240
START_TIMEOUT_S = 240
RATIOS = [0, 0.25, 0.5, 1, 1.5, 2]
LIMIT = max(2, min(4, os.cpu_count() or 2))  # runs at a time (each single-threaded)

CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  max_epochs: 10
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
model:
  class_path: vtss_lightning.models.TabularClassifier
  init_args: {{hidden_dims: [16], optimizer: adamw, lr: 0.02}}
data:
  class_path: vtss_lightning.data.TabularDataModule
  init_args:
    path: {train}
    target: label
    test_path: {test}
    batch_size: 2048   # one step per epoch
    generator: {{class_path: vtss_lightning.generators.SMOTEGenerator}}
vtss:
  ratios: {ratios}
  folds: null
"""

STRATEGIES = {
    "retrain": ["--vtss.strategy", "retrain"],
    "parallel": ["--vtss.strategy", "parallel"],
    "halving": ["--vtss.strategy", "halving"],
    "parallel_halving": ["--vtss.strategy", "parallel_halving"],
    "kfold": ["--vtss.strategy", "retrain", "--vtss.folds", "2"],
}
POINTS = ("first", "random", "all_but_one", "report")
CASES = [(s, p) for s in STRATEGIES for p in POINTS]


def records_at(strategy: str, point: str, total: int) -> int:
    """Records on disk when the run dies at ``point`` of a search that writes ``total``."""
    middle = random.Random(f"vtss-kill-{strategy}").randint(2, total - 2)  # seeded
    return {"first": 1, "random": middle, "all_but_one": total - 1, "report": total}[point]


def write_table(path: Path, n_no: int, n_yes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n_no + n_yes, 4)), columns=["a", "b", "c", "d"])
    frame.loc[n_no:, ["a", "b"]] += 1.0
    frame["label"] = ["no"] * n_no + ["yes"] * n_yes
    frame.to_csv(path, index=False)


class ForkServer:
    """``_kill_point.py`` as a subprocess: submit CLI runs, collect their exit codes."""

    def __init__(self, base: Path) -> None:
        env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.stderr = base / "forkserver.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr.open("w"),
            env=env,
            cwd=base,
            text=True,
        )
        self.answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._next(START_TIMEOUT_S)
        assert ready is not None and "ready" in ready, self.stderr.read_text()[-3000:]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.answers.put(json.loads(line))
        self.answers.put(None)

    def _next(self, timeout: float) -> dict | None:
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the fork server answered nothing in {timeout} s")

    def run_all(self, jobs: dict[str, dict]) -> dict[str, int | str]:
        """Every job, ``LIMIT`` at a time; each one's exit code (``-9``: SIGKILL)."""
        codes: dict[str, int | str] = {}
        waiting, active = list(jobs), 0
        while waiting or active:
            while waiting and active < LIMIT:
                name = waiting.pop(0)
                job = {"id": name, **jobs[name], "timeout": RUN_TIMEOUT_S}
                self.proc.stdin.write(json.dumps(job) + "\n")
                self.proc.stdin.flush()
                active += 1
            answer = self._next(RUN_TIMEOUT_S + 30)
            assert answer is not None, self.stderr.read_text()[-3000:]
            codes[answer["id"]] = answer["rc"]
            active -= 1
        return codes

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def on_disk(root: Path) -> tuple[int, int]:
    """Records in the run's progress file(s), and how many of them are finished fits."""
    lines = fits = 0
    for path in root.glob("vtss_progress*.jsonl"):
        lines += progress_lines(path)
        for text in path.read_text().split("\n")[1:]:
            try:
                fits += "loss" in json.loads(text)
            except (ValueError, TypeError):
                continue
    return lines, fits


def comparable(report):
    """The report without its timing fields (seconds, memory)."""
    if isinstance(report, dict):
        return {
            k: comparable(v)
            for k, v in report.items()
            if k not in ("timing", "seconds") and not k.endswith(("_seconds", "_mb"))
        }
    if isinstance(report, list):
        return [comparable(v) for v in report]
    return report


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Three rounds of runs: uninterrupted ones and the kills at the report (which give
    each strategy's record count); the other kills; every killed command again."""
    base = tmp_path_factory.mktemp("faults")
    train, test = base / "train.csv", base / "test.csv"
    write_table(train, 300, 40, seed=0)
    write_table(test, 50, 50, seed=1)
    config = base / "config.yaml"
    config.write_text(CONFIG.format(train=train, test=test, ratios=RATIOS))

    def job(name: str, strategy: str, log: str, kill=None) -> dict:
        argv = ["fit", "--config", str(config), "--trainer.default_root_dir", str(base / name)]
        return {"argv": argv + STRATEGIES[strategy], "log": str(base / f"{log}.log"), "kill": kill}

    first = {}
    for s in STRATEGIES:
        first.update(
            {f"{s}-{run}": job(f"{s}-{run}", s, f"{s}-{run}") for run in ("full", "again")}
        )
        first[f"{s}-report"] = job(f"{s}-report", s, f"{s}-report-killed", ["report", 1])
    server = ForkServer(base)
    try:
        codes = server.run_all(first)
        totals = {s: on_disk(base / f"{s}-report")[0] for s in STRATEGIES}
        expected = {
            f"{s}-{p}": records_at(s, p, totals[s]) if totals[s] >= 4 else None for s, p in CASES
        }
        kills = {
            f"{s}-{p}": job(f"{s}-{p}", s, f"{s}-{p}-killed", ["record", expected[f"{s}-{p}"]])
            for s, p in CASES
            if p != "report" and expected[f"{s}-{p}"] is not None
        }
        codes.update(server.run_all(kills))
        landed = {f"{s}-{p}": on_disk(base / f"{s}-{p}") for s, p in CASES}
        landed = {k: (*v, (base / k / "vtss_report.json").exists()) for k, v in landed.items()}
        reruns = {f"{s}-{p}": job(f"{s}-{p}", s, f"{s}-{p}-rerun") for s, p in CASES}
        rerun_codes = server.run_all(reruns)
    finally:
        server.close()
    return {
        "base": base,
        "codes": codes,
        "rerun_codes": rerun_codes,
        "totals": totals,
        "expected": expected,
        "landed": landed,
    }


def log_tail(faults, log: str) -> str:
    return (faults["base"] / f"{log}.log").read_text()[-3000:]


def report_of(faults, name: str, log: str) -> dict:
    path = faults["base"] / name / "vtss_report.json"
    assert path.exists(), log_tail(faults, log)
    return json.loads(path.read_text())


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_uninterrupted_runs_give_the_same_report(faults, strategy):
    for run in ("full", "again"):
        assert faults["codes"][f"{strategy}-{run}"] == 0, log_tail(faults, f"{strategy}-{run}")
    full = report_of(faults, f"{strategy}-full", f"{strategy}-full")
    again = report_of(faults, f"{strategy}-again", f"{strategy}-again")
    assert comparable(again) == comparable(full)
    # the comparisons have something to catch: distinct losses, test metrics
    losses = [c["val_balanced_loss"] for c in full["candidates"] if c["val_balanced_loss"]]
    assert len(set(losses)) == len(losses) >= 2
    assert full["test_metrics"]["balanced_log_loss"] > 0


@pytest.mark.parametrize(("strategy", "point"), CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_rerun_after_kill_ends_with_the_uninterrupted_report(faults, strategy, point):
    name = f"{strategy}-{point}"
    expected = faults["expected"][name]
    assert expected is not None, f"{strategy} wrote {faults['totals'][strategy]} records"
    # the kill landed where intended: SIGKILL, the expected records, no report
    assert faults["codes"][name] == -9, log_tail(faults, f"{name}-killed")
    lines, fits, reported = faults["landed"][name]
    assert lines == expected and not reported, log_tail(faults, f"{name}-killed")
    # the same command again resumes the recorded fits and ends with the same report
    rerun_log = log_tail(faults, f"{name}-rerun")
    assert faults["rerun_codes"][name] == 0, rerun_log
    resumed = re.search(r"(\d+) fit\(s\) already done", rerun_log)
    assert int(resumed.group(1) if resumed else 0) == fits, rerun_log
    full = report_of(faults, f"{strategy}-full", f"{strategy}-full")
    rerun = report_of(faults, name, f"{name}-rerun")
    for key in ("val_balanced_loss", "fold_losses", "status"):
        assert [c[key] for c in rerun["candidates"]] == [c[key] for c in full["candidates"]]
    assert rerun["selected_sizes"] == full["selected_sizes"]
    assert rerun["test_metrics"] == full["test_metrics"]
    assert comparable(rerun) == comparable(full)
    assert not list((faults["base"] / name).glob("vtss_progress*.jsonl"))  # gone with the report
