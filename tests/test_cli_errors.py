"""Bad input through the real ``vtss`` command: one ``vtss: error:`` line, no
traceback, exit status 2. (Missing path and missing target are in test_cli.py.)

All processes start together in one module-scoped fixture; each spends its time
importing torch/Lightning and stops at the DataModule's setup. The other input errors
(a class too small after the split, a validation split without a class, generator
contract) take the same path and are tested in Python (test_reliability.py).
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_cli import REPO, Run, single_error_line, vtss_executable  # tests/ is on sys.path
from test_faults import CONFIG, RATIOS, write_table


def table(n_no: int = 40, n_yes: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_no + n_yes
    out = pd.DataFrame(rng.normal(size=(n, 2)).round(4), columns=["tenure", "spend"])
    out["label"] = ["no"] * n_no + ["yes"] * n_yes
    return out


def cases(base: Path) -> dict[str, Path]:
    paths = {name: base / f"{name}.csv" for name in ("empty", "one_class", "typo", "inf")}
    paths["empty"].write_text("")
    table().assign(label="no").to_csv(paths["one_class"], index=False)
    typo = table()
    typo["spend"] = typo["spend"].astype(object)
    typo.loc[5, "spend"] = "n/a?"
    typo.to_csv(paths["typo"], index=False)
    inf = table()
    inf.loc[3, "tenure"] = -np.inf
    inf.to_csv(paths["inf"], index=False)
    return paths


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli_errors")
    started = {}
    try:
        for name, path in cases(base).items():
            args = ["fit", "--config", str(REPO / "configs" / "csv.yaml")]
            args += ["--data.init_args.path", str(path), "--data.init_args.target", "label"]
            args += ["--trainer.max_epochs", "1", "--trainer.default_root_dir", str(base / name)]
            started[name] = Run(args, base, base / name)
        yield started
    finally:
        for run in started.values():
            run.kill()


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("empty", r"path '.*empty\.csv' is empty"),
        ("one_class", r"the target has only one class \('no'\); need at least two"),
        (
            "typo",
            r"numeric column 'spend' has 1 value\(s\) that are not numbers \(e\.g\. 'n/a\?'\)",
        ),
        ("inf", r"column 'tenure' contains ±inf values"),
    ],
)
def test_bad_input_is_one_clean_error_line(runs, name, pattern):
    rc, _, err = runs[name].result()
    assert rc == 2, err[-3000:]
    line = single_error_line(err)
    assert re.search(pattern, line), line


# ------------------------------------------------------------------ file faults
# A file the run reads or writes fails: one ``vtss: error:`` line naming the path and
# the cause, exit status 1, and the search's progress kept for the rerun.

FILE_LIMIT = 16 * 1024  # bytes: config.yaml, progress and report fit, the curve does not
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


class FaultRun(Run):
    """A ``vtss`` process whose child runs ``preexec`` before exec (limits, privileges)."""

    def __init__(self, args: list[str], root: Path, preexec=None) -> None:
        self.root = root
        self._proc = subprocess.Popen(
            [vtss_executable(), *args],
            cwd=root.parent,
            env={**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec,
        )
        self._result = None


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def obey_file_modes() -> None:
    """Root ignores file modes; without CAP_DAC_OVERRIDE (after exec) it obeys them."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def file_modes_obeyed(folder: Path) -> bool:
    """Whether a child started with :func:`obey_file_modes` cannot write into ``folder``."""
    probe = folder / "probe"
    try:
        subprocess.run(["touch", str(probe)], preexec_fn=obey_file_modes, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return not probe.exists()


class OpensAFile:
    """Unpickled without ``weights_only``, this would create ``path`` (code from a file)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("file_faults")
    train, test = base / "train.csv", base / "test.csv"
    write_table(train, 300, 40, seed=0)
    write_table(test, 50, 50, seed=1)
    config = base / "config.yaml"
    config.write_text(CONFIG.format(train=train, test=test, ratios=RATIOS))
    (base / "progress_dir").mkdir()
    (base / "corrupt.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save({"state_dict": OpensAFile(str(base / "pwned"))}, base / "malicious.ckpt")
    readonly = base / "readonly"
    readonly.mkdir(mode=0o555)
    specs = {
        "progress_dir": (["--vtss.progress_path", str(base / "progress_dir")], None),
        "file_size": ([], limit_file_size),
        "corrupt_ckpt": (["--ckpt_path", str(base / "corrupt.ckpt")], None),
        "malicious_ckpt": (["--ckpt_path", str(base / "malicious.ckpt")], None),
    }
    if file_modes_obeyed(readonly):
        specs["readonly"] = ([], obey_file_modes)
        specs["readonly_logger"] = (["--trainer.logger", "true"], obey_file_modes)
    started = {}
    try:
        for name, (extra, preexec) in specs.items():
            root = readonly if name.startswith("readonly") else base / name
            args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(root)]
            started[name] = FaultRun([*args, *extra], root, preexec)
        yield base, started
    finally:
        for run in started.values():
            run.kill()


def fault_line(fault_runs, name: str, code: int = 1) -> str:
    """The one error line of a fault run; ``code``: 1 for file faults, 2 for bad input."""
    base, started = fault_runs
    if name not in started:
        pytest.skip("file modes are not enforced for this user (root keeps CAP_DAC_OVERRIDE)")
    rc, _, err = started[name].result()
    assert rc == code, err[-3000:]
    line = single_error_line(err)  # no traceback, one error line ...
    assert err.strip().splitlines()[-1] == line  # ... and it is the last one
    return line


def test_progress_path_that_is_a_folder_is_one_line(fault_runs):
    line = fault_line(fault_runs, "progress_dir", code=2)  # refused before any fit
    assert f"'{fault_runs[0] / 'progress_dir'}'" in line and "is a folder" in line
    assert not list((fault_runs[0] / "progress_dir").glob("*.tmp"))  # no half-written file


@pytest.mark.parametrize("name", ["readonly", "readonly_logger"])
def test_read_only_report_folder_is_one_line(fault_runs, name):
    """logger: false saves config.yaml there first; a logger makes lightning_logs/."""
    line = fault_line(fault_runs, name)
    readonly = fault_runs[0] / "readonly"
    expected = {
        "readonly": f"parent directory not writable: '{readonly / 'config.yaml'}'",
        "readonly_logger": f"'{readonly / 'lightning_logs'}': Permission denied (EACCES)",
    }
    assert expected[name] in line, line
    assert line.endswith("choose another --trainer.default_root_dir"), line


def test_file_size_limit_is_one_line_and_keeps_the_progress(fault_runs):
    """``ulimit -f``: the curve's write fails with EFBIG (CPython ignores SIGXFSZ)."""
    line = fault_line(fault_runs, "file_size")
    root = fault_runs[0] / "file_size"
    assert f"'{root / 'vtss_curve.png'}': File too large (EFBIG)" in line, line
    (progress,) = root.glob("vtss_progress*.jsonl")  # every finished fit is kept
    fits = [ln for ln in progress.read_text().splitlines()[1:] if '"loss"' in ln]
    assert len(fits) == len(RATIOS)
    assert f"resumes from the {len(RATIOS)} finished fit(s) kept in {progress}" in line, line


def test_corrupt_checkpoint_is_one_line(fault_runs):
    line = fault_line(fault_runs, "corrupt_ckpt")
    path = fault_runs[0] / "corrupt.ckpt"
    assert f"cannot load the checkpoint '{path}': the file is corrupt" in line, line


def test_malicious_checkpoint_is_refused_in_one_line(fault_runs):
    line = fault_line(fault_runs, "malicious_ckpt")
    path = fault_runs[0] / "malicious.ckpt"
    assert f"cannot load the checkpoint '{path}': it asks to import " in line, line
    assert re.search(r"import [\w.]*open, which the weights-only loader refuses", line), line
    assert not (fault_runs[0] / "pwned").exists()  # nothing of it ran


def raised(fn) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


def test_only_file_faults_become_one_line_bugs_keep_their_traceback(tmp_path):
    from vtss_lightning.cli import file_fault

    missing = tmp_path / "missing" / "x.json"

    def fault():
        missing.read_text()

    def bug_while_handling():
        try:
            fault()
        except OSError:
            int("a bug in the except block")  # ValueError, its __context__ the OSError

    def explicitly_wrapped():
        try:
            fault()
        except OSError as exc:
            raise RuntimeError("could not read") from exc

    expected = f"'{missing}': No such file or directory (ENOENT)"
    assert file_fault(raised(fault)) == expected
    assert file_fault(raised(explicitly_wrapped)) == expected
    assert file_fault(raised(bug_while_handling)) is None
    assert file_fault(raised(lambda: {}["state_dict"])) is None  # not while loading a checkpoint
    assert file_fault(raised(lambda: 1 / 0)) is None
