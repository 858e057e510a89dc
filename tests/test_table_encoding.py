"""What a table's columns become once encoded: values that overflow float32, and
text columns with too many levels (IDs dropped, many levels capped), through the
Python API and the real ``vtss`` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import LinearModule
from test_cli import REPO, Run, find_one, single_error_line  # tests/ is on sys.path

from vtss_lightning import TabularDataModule, VTSSError, VTSSTuner
from vtss_lightning.data.datamodule import SyntheticAugmentationDataModule
from vtss_lightning.data.preprocessing import TabularPreprocessor
from vtss_lightning.generators.base import SyntheticGenerator

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def table(n: int = 150, n_pos: int = 30, seed: int = 0, spread: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = pd.DataFrame(
        {"amount": rng.normal(size=n) * spread, "tenure": rng.normal(size=n).round(3)}
    )
    out["label"] = ["no"] * (n - n_pos) + ["yes"] * n_pos
    return out


def with_value(frame: pd.DataFrame, value: float, row: int = 3) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[row, "amount"] = value
    return frame


def setup_error(dm) -> str:
    with pytest.raises(VTSSError) as info:
        dm.setup()
    message = str(info.value)
    assert "\n" not in message and "NaN" not in message and "learning rate" not in message
    return message


# ------------------------------------------------------------ values beyond float32


@pytest.mark.parametrize("row", [3, 90, 120])  # training or validation rows: one file
def test_a_finite_value_beyond_float32_names_the_column_and_the_training_data(row):
    dm = TabularDataModule.from_frame(with_value(table(), 1e39, row), "label", scale=False)
    message = setup_error(dm)
    assert message.startswith(
        "column 'amount' in the training data has a value of 1e+39, beyond float32"
    )
    assert "rescale it" in message


def test_a_value_that_overflows_the_scaler_is_named_not_a_nan_later():
    dm = TabularDataModule.from_frame(with_value(table(), -1e300), "label")
    message = setup_error(dm)
    assert message.startswith("column 'amount' in the training data has a value of -1e+300")
    assert "too large to standardise" in message


def test_a_scaled_large_column_that_fits_float32_is_accepted():
    dm = TabularDataModule.from_frame(with_value(table(), 1e39), "label")  # scaled: fits
    dm.setup()
    assert bool(dm.holdout.x_train.isfinite().all()) and bool(dm.holdout.x_val.isfinite().all())


@pytest.mark.parametrize(
    ("spread", "value", "tail"),
    [
        (1.0, 1e39, "beyond float32 (±3.4e38); rescale it"),  # beyond float32 as it is
        (1e-3, 1e36, "once standardised with the training rows' scale"),  # only once scaled
    ],
)
def test_test_data_beyond_float32_is_named_as_test_data(spread, value, tail):
    dm = TabularDataModule.from_frame(
        table(spread=spread), "label", test_frame=with_value(table(40, 20, 1, spread), value)
    )
    message = setup_error(dm)
    assert message.startswith(f"column 'amount' in the test data has a value of {value:.3g}")
    assert tail in message


@pytest.mark.parametrize("role", ["training data", "test data"])
def test_arrays_beyond_float32_are_named_with_their_role(role):
    x = np.random.default_rng(0).normal(size=(60, 3))
    y = np.array([0] * 45 + [1] * 15)
    big = x.copy()
    big[5, 1] = 1e39
    x_train, x_test = (big, None) if role == "training data" else (x, big)
    dm = SyntheticAugmentationDataModule(
        x=x_train, y=y, x_test=x_test, y_test=None if x_test is None else y
    )
    message = setup_error(dm)
    assert message.startswith(f"feature column 1 (counting from 0) in the {role} has a value")


# ------------------------------------------------------------- many levels, and IDs


def customers(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "spend": rng.normal(size=n),
            "customer_id": [f"C{i:07d}" for i in rng.permutation(n)],
            "plan": rng.choice(["basic", "pro", "max"], n),
            "label": rng.choice(["no", "yes"], n, p=[0.8, 0.2]),
        }
    )


def test_an_id_like_text_column_is_dropped_with_a_note_naming_it():
    dm = TabularDataModule.from_frame(customers(), "label")
    dm.setup()
    assert dm.n_features == 4  # spend + three plans, not one column per customer
    assert not any("customer_id" in n for n in dm.schema.names)
    (note,) = [n for n in dm.notes if "customer_id" in n]
    assert note.startswith("column 'customer_id' dropped: 3,000 distinct values in 3,000 rows")
    assert "max_categories=None" in note


def test_the_id_note_reaches_the_search_report():
    dm = TabularDataModule.from_frame(customers(600), "label", batch_size=128)
    tuner = VTSSTuner(
        {"accelerator": "cpu", "max_epochs": 1}, ratios=[0, 1], folds=None, verbose=False
    )
    result = tuner.search(LinearModule(), dm, progress_bar=False)
    assert any("'customer_id' dropped" in n for n in result.diagnostics["notes"])


def test_max_categories_none_keeps_every_level_of_every_column():
    dm = TabularDataModule.from_frame(customers(200), "label", max_categories=None)
    dm.setup()
    assert dm.n_features == 1 + 200 + 3
    assert not any("dropped" in n for n in dm.notes)


def cities(n: int = 4000, levels: int = 200, seed: int = 0) -> pd.DataFrame:
    """A long-tailed ``city`` column: a few big cities, every one of ``levels`` present."""
    rng = np.random.default_rng(seed)
    names = np.array([f"city{i:03d}" for i in range(levels)], dtype=object)
    weights = 1.0 / np.arange(1, levels + 1)
    city = rng.choice(names, n, p=weights / weights.sum())
    city[rng.permutation(n)[:levels]] = names
    return pd.DataFrame(
        {
            "spend": rng.normal(size=n),
            "city": city,
            "label": rng.choice(["no", "yes"], n, p=[0.8, 0.2]),
        }
    )


def test_a_200_level_column_is_capped_to_its_most_frequent_levels_with_a_note():
    dm = TabularDataModule.from_frame(cities(), "label")
    dm.setup()
    (group,) = dm.schema.categorical_groups
    assert len(group) == 50 and dm.n_features == 51  # 49 levels + one shared column
    (note,) = [n for n in dm.notes if "'city'" in n]
    assert note.startswith("column 'city' has 200 levels: its 49 most frequent")
    for fold, train, val in dm.fold_indices(3):  # every fold encodes to the same width
        with dm.use_split(fold, train, val) as split:
            assert split.x_train.shape[1] == split.x_val.shape[1] == 51


def test_the_kept_levels_are_the_most_frequent_in_the_training_rows_only():
    frame = cities(2000).drop(columns="label")
    train, other = frame.iloc[:1000], frame.iloc[1000:]
    layout = [sorted(frame["city"].unique())]
    pre = TabularPreprocessor(["city"], layout=layout, max_categories=10).fit(train)
    kept = [n.removeprefix("city_") for n in pre.schema.names[1:-1]]
    counts = train["city"].value_counts()
    assert set(kept) == set(counts.index[:9]) and pre.schema.names[-1].endswith(
        "infrequent_sklearn"
    )
    assert pre.capped_columns == {"city": len(layout[0])}
    unseen = pd.DataFrame({"spend": [0.0], "city": ["atlantis"]})
    assert pre.transform(unseen)[0, -1] == 1  # an unknown level joins the shared column
    assert pre.transform(other).shape[1] == 11


@pytest.mark.parametrize("bad", [1, 0, 2.5, True, "50"])
def test_a_bad_max_categories_is_refused(bad):
    with pytest.raises(VTSSError, match=r"^max_categories must be an integer >= 2 or None"):
        TabularDataModule.from_frame(table(), "label", max_categories=bad)


# ----------------------------------------------------------------- the real command


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("encoding")
    train, test = base / "train.csv", base / "test.csv"
    table(120, 30).to_csv(train, index=False)
    with_value(table(40, 20, seed=1), 1e39).to_csv(test, index=False)
    with_value(table(120, 30), 1e200).to_csv(base / "huge.csv", index=False)
    customers(1500).to_csv(base / "ids.csv", index=False)
    specs = {
        "test_overflow": [str(train), "--data.init_args.test_path", str(test)],
        "scaler_overflow": [str(base / "huge.csv")],
        "ids": [str(base / "ids.csv")],
    }
    started = {}
    try:
        for name, data in specs.items():
            args = ["fit", "--config", str(REPO / "configs" / "csv.yaml"), "--data.init_args.path"]
            args += [*data, "--data.init_args.target", "label", "--trainer.max_epochs", "1"]
            args += ["--vtss.ratios", "[0, 1]", "--trainer.default_root_dir", str(base / name)]
            started[name] = Run(args, base, base / name)
        yield started
    finally:
        for run in started.values():
            run.kill()


@pytest.mark.parametrize(
    ("name", "start"),
    [
        ("test_overflow", "column 'amount' in the test data has a value of 1e+39, beyond float32"),
        (
            "scaler_overflow",
            "column 'amount' in the training data has a value of 1e+200, too large",
        ),
    ],
)
def test_cli_overflow_is_one_error_line_and_a_failed_exit(runs, name, start):
    rc, _, err = runs[name].result()
    assert rc != 0, err[-3000:]
    assert single_error_line(err).startswith(f"vtss: error: {start}")


def test_cli_drops_an_id_column_and_reports_it(runs):
    runs["ids"].ok()
    report = json.loads(find_one(runs["ids"].root, "vtss_report.json").read_text())
    assert any("'customer_id' dropped" in n for n in report["diagnostics"]["notes"])


class FrameColumns(SyntheticGenerator):
    """A frame generator that bootstraps raw rows and records the columns it was fitted on."""

    input_kind = "frame"
    name = "frame_columns"
    seen: list[list[str]] = []

    def __init__(self) -> None:
        pass

    def _fit(self, x, schema, seed):
        FrameColumns.seen.append(list(x.columns))
        self._rows = x.reset_index(drop=True)

    def _sample(self, n, seed):
        pick = np.random.default_rng(seed).integers(0, len(self._rows), n)
        return self._rows.iloc[pick].reset_index(drop=True)


def test_a_frame_generator_never_sees_a_dropped_id_column():
    FrameColumns.seen.clear()
    dm = TabularDataModule.from_frame(customers(600), "label", generator=FrameColumns())
    dm.setup()
    x, _ = dm.training_tensors({1: 50})  # fits the generator, draws and encodes its rows
    assert FrameColumns.seen == [["spend", "plan"]]
    assert x.shape[1] == dm.n_features and torch.isfinite(x).all()
