"""Bad input through the real ``vtss`` command: one ``vtss: error:`` line, no
traceback, exit status 2. (Missing path and missing target are in test_cli.py.)

All processes start together in one module-scoped fixture; each spends its time
importing torch/Lightning and stops at the DataModule's setup. The other input errors
(a class too small after the split, a validation split without a class, generator
contract) take the same path and are tested in Python (test_reliability.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cli import REPO, Run, single_error_line  # tests/ is on sys.path under pytest


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
