"""Property test: any small table gives a clean report with finite numbers or a
``VTSSError`` — never another exception (issue 6).

Tables mix numeric, integer, text and all-missing columns with missing values;
labels are strings, non-contiguous integers or booleans; class sizes run from one
row to balanced. Derandomised, so a failure reproduces on every run.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtss_lightning import TabularDataModule, VTSSError, VTSSTuner
from vtss_lightning.generators import GaussianGenerator, JitterGenerator, SMOTEGenerator
from vtss_lightning.models import TabularClassifier

LABELS = {
    "text": ["no", "yes", "maybe", "ünïcode label"],
    "ints": [-3, 7, 42, 1000],
    "bools": [False, True],
}
GENERATORS = {"smote": SMOTEGenerator, "jitter": JitterGenerator, "gaussian": GaussianGenerator}


@st.composite
def tables(draw):
    kind = draw(st.sampled_from(sorted(LABELS)))
    n_classes = draw(st.integers(2, len(LABELS[kind])))
    sizes = draw(st.lists(st.integers(1, 25), min_size=n_classes, max_size=n_classes))
    if draw(st.booleans()):
        sizes = [sizes[0]] * n_classes  # already balanced
    n = sum(sizes)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    columns = draw(
        st.lists(
            st.sampled_from(["float", "int", "text", "empty", "constant"]),
            min_size=1,
            max_size=4,
        )
    )
    data = {}
    for j, col in enumerate(columns):
        if col == "float":
            values = rng.normal(size=n) * 10 ** draw(st.integers(-3, 6))
        elif col == "int":
            values = rng.integers(-5, 5, n).astype(float)
        elif col == "text":
            values = rng.choice(["a", "b", "c d", "1"], n).astype(object)
        elif col == "empty":
            values = np.full(n, np.nan)
        else:
            values = np.full(n, 3.0)
        missing = rng.random(n) < draw(st.sampled_from([0.0, 0.1, 0.5]))
        values = pd.Series(values, dtype=object if col == "text" else float)
        values[missing] = None if col == "text" else np.nan
        data[f"c{j}_{col}"] = values
    frame = pd.DataFrame(data)
    labels = LABELS[kind][:n_classes]
    frame["label"] = np.repeat(np.array(labels, dtype=object), sizes)
    frame = frame.sample(frac=1.0, random_state=int(rng.integers(1000))).reset_index(drop=True)
    options = {
        "generator": draw(st.sampled_from(sorted(GENERATORS))),
        "val_fraction": draw(st.sampled_from([0.2, 0.5])),
        "folds": draw(st.sampled_from([None, 2])),
    }
    return frame, options


def check_report(result) -> None:
    assert result.candidates
    for cand in result.candidates:
        assert cand.val_balanced_loss is None or math.isfinite(cand.val_balanced_loss)
        assert (cand.val_balanced_loss is None) == (cand.status != "ok")
        assert all(m >= 0 for m in cand.sizes.values())
    selected = result.selected
    if result.selected_sizes:  # a search ran: the winner has a finite loss
        assert math.isfinite(selected.val_balanced_loss)
    else:
        assert any("no synthetic rows" in n for n in result.diagnostics["notes"])
    text = result.to_json()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(tables())
def test_any_small_table_gives_a_clean_report_or_a_vtss_error(case):
    frame, options = case
    dm = TabularDataModule.from_frame(
        frame,
        target="label",
        generator=GENERATORS[options["generator"]](),
        val_fraction=options["val_fraction"],
        batch_size=32,
    )
    model = TabularClassifier(hidden_dims=[], optimizer="lbfgs")
    tuner = VTSSTuner(
        {"accelerator": "cpu", "max_epochs": 1},
        ratios=[0, 1],
        folds=options["folds"],
        verbose=False,
    )
    pl.seed_everything(0, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = tuner.search(model, dm)
        except VTSSError as exc:
            message = str(exc)
            assert message and "\n" not in message  # one line for the CLI
            return
    check_report(result)


def test_the_strategy_reaches_both_outcomes():
    """The property above is not vacuous: both branches occur among such tables."""
    outcomes = set()
    for sizes in ([1, 20], [12, 30]):
        frame = pd.DataFrame({"x": np.arange(sum(sizes), dtype=float)})
        frame["label"] = np.repeat(["a", "b"], sizes)
        dm = TabularDataModule.from_frame(frame, target="label")
        try:
            VTSSTuner({"accelerator": "cpu", "max_epochs": 1}, ratios=[0, 1], verbose=False).search(
                TabularClassifier(hidden_dims=[], optimizer="lbfgs"), dm
            )
            outcomes.add("report")
        except VTSSError:
            outcomes.add("error")
    assert outcomes == {"report", "error"}


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
