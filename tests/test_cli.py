"""The ``vtss`` console script, run for real in subprocesses.

Each ``vtss`` process spends ~10 s importing torch/Lightning on a small machine, so
all runs of this module start together (one module-scoped fixture) and each test
waits for its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 400


def vtss_executable() -> str:
    local = Path(sys.executable).parent / "vtss"
    if local.exists():
        return str(local)
    found = shutil.which("vtss")
    if found is None:
        pytest.skip("the vtss console script is not installed (pip install -e .)")
    return found


def write_table(path: Path, n_no: int, n_yes: int, seed: int) -> None:
    """Numeric columns, a string categorical column with gaps, string labels."""
    rng = np.random.default_rng(seed)
    n = n_no + n_yes
    frame = pd.DataFrame(
        {
            "tenure": rng.normal(size=n),
            "spend": rng.normal(size=n),
            "plan": rng.choice(["basic", "pro", "max"], n),
            "label": ["no"] * n_no + ["yes"] * n_yes,
        }
    )
    frame.loc[n_no:, "tenure"] += 1.5
    frame.loc[[i for i in (1, 4, 9, 30, 61) if i < n] + [n - 1], "plan"] = np.nan
    frame.to_csv(path, index=False)


class Run:
    """A started ``vtss`` process; ``result()`` waits once and caches the outcome."""

    def __init__(self, args: list[str], cwd: Path, root: Path) -> None:
        self.root = root
        env = {**os.environ, "MPLBACKEND": "Agg"}
        self._proc = subprocess.Popen(
            [vtss_executable(), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._result: tuple[int, str, str] | None = None

    def result(self) -> tuple[int, str, str]:
        if self._result is None:
            try:
                out, err = self._proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                out, err = self._proc.communicate()
                pytest.fail(f"vtss did not finish in {TIMEOUT_S} s:\n{out[-2000:]}\n{err[-2000:]}")
            self._result = (self._proc.returncode, out, err)
        return self._result

    def ok(self) -> tuple[str, str]:
        rc, out, err = self.result()
        assert rc == 0, f"vtss exited {rc}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
        return out, err

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    train, test = base / "train.csv", base / "test.csv"
    write_table(train, 90, 30, seed=0)
    write_table(test, 20, 20, seed=1)
    csv = ["fit", "--config", str(REPO / "configs" / "csv.yaml")]
    # The shipped configs train longer than a unit test should; overrides keep the
    # wiring identical and only shorten the budget.
    fast_csv = ["--trainer.max_epochs", "3"]
    specs = {
        # quickstart.yaml ships folds=5 (~90 s here); folds=2 runs the same fold path.
        "quickstart": (
            ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), "--vtss.folds", "2"],
            base,
        ),
        # exactly the usage the csv.yaml header documents: only path and target given
        "csv": (
            [
                *csv,
                "--data.init_args.path",
                str(train),
                "--data.init_args.target",
                "label",
                *fast_csv,
            ],
            REPO,
        ),
        "csv_with_test": (
            [
                *csv,
                "--data.init_args.path",
                str(train),
                "--data.init_args.target",
                "label",
                "--data.init_args.test_path",
                str(test),
                *fast_csv,
            ],
            base,
        ),
        "bad_path": (
            [
                *csv,
                "--data.init_args.path",
                str(base / "no_such_file.csv"),
                "--data.init_args.target",
                "label",
            ],
            base,
        ),
        "bad_target": (
            [
                *csv,
                "--data.init_args.path",
                str(train),
                "--data.init_args.target",
                "outcome",
                "--data.init_args.test_path",
                "null",
                *fast_csv,
            ],
            base,
        ),
    }
    started = {}
    try:
        for name, (args, cwd) in specs.items():
            root = base / f"root_{name}"
            started[name] = Run([*args, "--trainer.default_root_dir", str(root)], cwd, root)
        yield started
    finally:
        for run in started.values():
            run.kill()


def find_one(root: Path, name: str) -> Path:
    hits = list(root.rglob(name))
    assert len(hits) == 1, f"expected one {name} under {root}, found {hits}"
    return hits[0]


def single_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("vtss: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# --------------------------------------------------------------------------- runs


def test_quickstart_end_to_end(runs):
    run = runs["quickstart"]
    out, _ = run.ok()
    report_path = find_one(run.root, "vtss_report.json")
    curve = report_path.parent / "vtss_curve.png"
    assert curve.exists() and curve.stat().st_size > 1000
    report = json.loads(report_path.read_text())
    ratios = [c["ratio"] for c in report["candidates"]]
    added = report["diagnostics"].get("grid_extended_to", [])  # the largest size kept winning
    assert ratios == [0.0, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, *added]
    assert all(len(c["fold_losses"]) == 2 for c in report["candidates"])
    assert report["diagnostics"]["validation"] == "1x2-fold"
    assert report["selected_ratio"] in ratios
    assert set(report["selected_sizes"]) == {"malignant"}
    assert {"balanced_log_loss", "balanced_accuracy", "auprc"} <= set(report["test_metrics"])
    assert report["config"]["folds"] == 2
    assert "VTSS selected ratio" in out


def test_csv_config_with_path_and_target_only(runs):
    """The csv.yaml header's documented usage: a user's CSV, only path/target given."""
    run = runs["csv"]
    run.ok()
    report = json.loads(find_one(run.root, "vtss_report.json").read_text())
    assert len(report["candidates"]) == 9
    assert set(report["selected_sizes"]) == {"yes"}
    assert report["diagnostics"]["class_counts_train"] == {"no": 72, "yes": 24}


def test_csv_config_with_categorical_column_and_string_labels(runs):
    run = runs["csv_with_test"]
    run.ok()
    report_path = find_one(run.root, "vtss_report.json")
    assert (report_path.parent / "vtss_curve.png").exists()
    report = json.loads(report_path.read_text())
    assert report["diagnostics"]["class_counts_train"] == {"no": 72, "yes": 24}
    assert report["diagnostics"]["gaps"] == {"yes": 48}
    assert any("plan" in note and "imput" in note for note in report["diagnostics"]["notes"])
    assert [c["sizes"]["yes"] for c in report["candidates"]] == [0, 24, 36, 43, 48, 53, 60, 72, 96]
    assert set(report["test_metrics"]) >= {"balanced_log_loss", "balanced_accuracy", "auprc"}


def test_bad_path_is_one_clean_error_line(runs):
    rc, _, err = runs["bad_path"].result()
    assert rc != 0
    line = single_error_line(err)
    assert "no_such_file.csv" in line and "does not exist" in line


def test_missing_target_column_is_one_clean_error_line(runs):
    rc, _, err = runs["bad_target"].result()
    assert rc != 0
    line = single_error_line(err)
    assert "'outcome'" in line and "not found" in line


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_parses_and_resolves_its_classes(config, monkeypatch, capsys):
    """Each YAML in configs/ names importable classes and valid arguments."""
    from vtss_lightning.cli import main

    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", f"configs/{config}", "--print_config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "class_path: vtss_lightning.generators." in printed
    assert "vtss:" in printed
