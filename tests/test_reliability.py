"""Failure behaviour by design: clear VTSSErrors for bad input, failed candidates that
do not end the search, and the cases that must simply work (issue 6).

Cases already covered elsewhere are not repeated here: missing path / target /
one class / a 1-row class (test_data.py), gap 0 (test_search.py, test_callback.py),
categorical columns, missing values and string labels (test_data.py, test_cli.py).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from helpers import LinearModule, quiet_trainer

from vtss_lightning import TabularDataModule, VTSSError, VTSSTuner
from vtss_lightning._random import POOL_CHUNK_ROWS
from vtss_lightning.data.preprocessing import TabularPreprocessor
from vtss_lightning.generators import SMOTEGenerator, SyntheticGenerator
from vtss_lightning.models import TabularClassifier
from vtss_lightning.search import SearchEngine
from vtss_lightning.search.strategies import BaseScorer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CPU = {"accelerator": "cpu", "max_epochs": 1}


def frame(n_neg=80, n_pos=20, seed=0, label=("neg", "pos")) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_neg + n_pos
    out = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    out.loc[n_neg:, ["a", "b"]] += 1.0
    out["y"] = [label[0]] * n_neg + [label[1]] * n_pos
    return out


def logistic() -> TabularClassifier:
    return TabularClassifier(hidden_dims=[], optimizer="lbfgs")


# ------------------------------------------------------------ unreadable input


def test_a_directory_or_an_unsupported_file_is_a_clear_error(tmp_path):
    with pytest.raises(VTSSError, match="is not a file"):
        TabularDataModule(path=str(tmp_path), target="y")
    odd = tmp_path / "data.xlsx"
    odd.write_bytes(b"\x00\x01")
    with pytest.raises(VTSSError, match=r"unsupported file type; use \.csv or \.parquet"):
        TabularDataModule(path=str(odd), target="y")


def test_a_corrupt_or_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "data.csv.gz"
    bad.write_bytes(b"this is not gzip")
    dm = TabularDataModule(path=str(bad), target="y")
    with pytest.raises(VTSSError, match=r"cannot read path .*data\.csv\.gz"):
        dm.setup()
    parquet = tmp_path / "data.parquet"
    parquet.write_bytes(b"this is not parquet")
    dm = TabularDataModule(path=str(parquet), target="y")
    # without pyarrow: how to get it; with it: the file is not Parquet
    with pytest.raises(
        VTSSError, match=r"data\.parquet.*pip install pyarrow|cannot read path .*data\.parquet"
    ):
        dm.setup()


@pytest.mark.parametrize(("content", "match"), [("", "is empty"), ("a,b,y\n", "has no rows")])
def test_an_empty_table_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    dm = TabularDataModule(path=str(path), target="y")
    with pytest.raises(VTSSError, match=match):
        dm.setup()


# ------------------------------------------------------------- class counts


def test_a_class_too_small_for_the_generator_after_the_split_names_class_and_count():
    data = frame(n_neg=60, n_pos=2)  # 2 rows: 1 for training, 1 for validation
    dm = TabularDataModule.from_frame(
        data, target="y", generator=SMOTEGenerator(), val_fraction=0.5
    )
    dm.setup()
    with pytest.raises(
        VTSSError,
        match=r"class 'pos' after the split: 1 training row\(s\), but smote needs at least 2",
    ):
        dm.prepare_pool({1: 10})


def test_a_validation_split_without_some_class_suggests_folds_or_val_fraction():
    data = frame(n_neg=1000, n_pos=2)
    dm = TabularDataModule.from_frame(data, target="y", val_fraction=0.005)
    with pytest.raises(VTSSError, match=r"no rows of class\(es\) \['pos'\].*val_fraction.*folds="):
        dm.setup()


# ------------------------------------------------------------ bad values


def test_text_in_a_numeric_column_names_the_column_and_the_values(tmp_path):
    data = frame()
    data["a"] = data["a"].round(3).astype(str)
    data.loc[[3, 50], "a"] = ["?", "n/a "]
    with pytest.raises(VTSSError, match=r"numeric column 'a' has 2 value\(s\).*'\?'.*categorical="):
        TabularDataModule.from_frame(data, target="y").setup()
    # the same through a CSV file
    path = tmp_path / "typo.csv"
    data.to_csv(path, index=False)
    with pytest.raises(VTSSError, match="numeric column 'a'"):
        TabularDataModule(path=str(path), target="y").setup()
    # with categorical= listed, every other column must be numbers
    clean = frame()
    clean["colour"] = np.where(np.arange(len(clean)) % 2, "red", "blue")
    clean["b"] = clean["b"].astype(object)
    clean.loc[7, "b"] = "seven"
    dm = TabularDataModule.from_frame(clean, target="y", categorical=["colour"])
    with pytest.raises(VTSSError, match=r"numeric column 'b' has 1 value\(s\).*'seven'"):
        dm.setup()


def test_a_text_column_of_words_is_categorical_and_numbers_as_text_are_numbers():
    data = frame()
    data["colour"] = np.where(np.arange(len(data)) % 3, "red", "blue")
    data["d"] = data["a"].round(2).astype(str)  # numbers stored as text, listed as numeric
    dm = TabularDataModule.from_frame(data, target="y", categorical=["colour"])
    dm.setup()
    assert dm.schema.numeric == (0, 1, 2, 3) and dm.schema.categorical_groups == ((4, 5),)
    assert torch.isfinite(dm.holdout.x_train).all()


def test_unparseable_value_in_validation_rows_is_caught_too():
    data = frame()
    data["b"] = data["b"].astype(object)
    probe = TabularDataModule.from_frame(frame(), target="y")
    probe.setup()
    data.loc[int(probe.holdout.val_index[0]), "b"] = "oops"
    dm = TabularDataModule.from_frame(data, target="y", categorical=[])
    with pytest.raises(VTSSError, match="'oops'"):
        dm.setup()


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_values_in_training_validation_or_test_rows(value):
    data = frame()
    data.loc[0, "c"] = value
    with pytest.raises(VTSSError, match=r"column 'c' contains ±inf"):
        TabularDataModule.from_frame(data, target="y").setup()
    probe = TabularDataModule.from_frame(frame(), target="y")
    probe.setup()
    data = frame()
    data.loc[int(probe.holdout.val_index[0]), "c"] = value  # a validation row only
    with pytest.raises(VTSSError, match="±inf"):
        TabularDataModule.from_frame(data, target="y").setup()
    test = frame(10, 10, seed=3)
    test.loc[4, "a"] = value
    with pytest.raises(VTSSError, match=r"column 'a' contains ±inf"):
        TabularDataModule.from_frame(frame(), target="y", test_frame=test).setup()


def test_infinite_tensor_features_are_refused():
    from vtss_lightning import SyntheticAugmentationDataModule

    x = torch.randn(40, 2)
    x[3, 1] = math.inf
    dm = SyntheticAugmentationDataModule(x, [0] * 30 + [1] * 10)
    with pytest.raises(VTSSError, match="NaN or ±inf"):
        dm.setup()


# ------------------------------------------------------- generator contract


class Faulty(SyntheticGenerator):
    """A generator that breaks the contract in one chosen way."""

    name = "faulty"
    mode: ClassVar[str] = "rows"

    def _fit(self, x, schema, seed):
        self._x = x

    def _sample(self, n, seed):
        rows = self._x[torch.arange(n) % len(self._x)].clone()
        if self.mode == "rows":
            return rows[: max(n - 1, 0)]
        if self.mode == "width":
            return torch.cat([rows, rows[:, :1]], dim=1)
        if self.mode == "nan":
            rows[0, 0] = math.nan
        if self.mode == "inf":
            rows[-1, -1] = -math.inf
        return rows


class FaultyFrame(SyntheticGenerator):
    input_kind = "frame"
    name = "faulty-frame"
    mode: ClassVar[str] = "columns"

    def _fit(self, x, schema, seed):
        self._x = x

    def _sample(self, n, seed):
        rows = self._x.sample(n, replace=True, random_state=seed).reset_index(drop=True)
        if self.mode == "columns":
            return rows.drop(columns=["b"])
        rows.loc[0, "a"] = math.inf
        return rows


C = POOL_CHUNK_ROWS  # prepare_pool({1: 10}) asks the generator for one whole chunk


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        (
            "rows",
            rf"faulty returned {C - 1} rows when {C} were asked for \(sampling for class 'pos'\)",
        ),
        (
            "width",
            rf"faulty for class 'pos' returned rows of shape \({C}, 4\), expected \({C}, 3\)",
        ),
        ("nan", r"faulty for class 'pos' returned non-finite values"),
        ("inf", r"faulty for class 'pos' returned non-finite values"),
    ],
)
def test_generator_breaking_the_contract_is_named_with_its_class(monkeypatch, mode, match):
    monkeypatch.setattr(Faulty, "mode", mode)
    dm = TabularDataModule.from_frame(frame(), target="y", generator=Faulty())
    dm.setup()
    with pytest.raises(VTSSError, match=match):
        dm.prepare_pool({1: 10})


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("columns", r"faulty-frame for class 'pos' returned rows without column\(s\) \['b'\]"),
        ("inf", r"faulty-frame for class 'pos' returned unusable rows: column 'a' contains ±inf"),
    ],
)
def test_frame_generator_breaking_the_contract(monkeypatch, mode, match):
    monkeypatch.setattr(FaultyFrame, "mode", mode)
    dm = TabularDataModule.from_frame(frame(), target="y", generator=FaultyFrame())
    dm.setup()
    with pytest.raises(VTSSError, match=match):
        dm.prepare_pool({1: 10})


# ------------------------------------------------ divergence and out of memory


class Linear(LinearModule):
    """One linear layer trained full-batch with SGD; subclasses misbehave on purpose."""

    full_batch = True
    lr = 0.5

    def __init__(self, d: int = 3, k: int = 2):
        super().__init__(d, k)


class DivergesOnSyntheticRows(Linear):
    """Squared loss whose step is 1000x too large (weights blow up to inf, then NaN)
    whenever the training set holds more than ``real_rows`` rows, i.e. for every
    candidate with synthetic rows."""

    real_rows = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        scale = 1000.0 if len(x) > self.real_rows else 1.0
        return scale * ((self(x) - F.one_hot(y, 2).float()) ** 2).mean()


def tuner_dm():
    return TabularDataModule.from_frame(frame(), target="y", batch_size=64)


def test_a_diverging_candidate_is_marked_failed_and_the_search_goes_on():
    dm = tuner_dm()
    dm.setup()
    model = DivergesOnSyntheticRows()
    model.real_rows = len(dm.holdout.y_train)
    result = VTSSTuner({**CPU, "max_epochs": 20}, ratios=[0, 1, 2], verbose=False).search(model, dm)
    statuses = [c.status for c in result.candidates]
    assert statuses == ["ok", *["failed: non-finite validation loss"] * 2]
    assert result.selected_ratio == 0.0
    assert math.isfinite(result.selected.val_balanced_loss)
    assert result.candidates[1].val_balanced_loss is None
    result.to_json()  # JSON without NaN


def test_every_candidate_diverging_is_a_clear_error():
    model = DivergesOnSyntheticRows()
    model.real_rows = -1  # even the real rows alone explode
    with pytest.raises(VTSSError, match="every candidate failed.*learning rate"):
        VTSSTuner({**CPU, "max_epochs": 20}, ratios=[0, 1], verbose=False).search(model, tuner_dm())


class OutOfMemoryAbove(Linear):
    """Raises CUDA's out-of-memory error for batches above ``limit`` rows (on a CPU)."""

    full_batch = False
    limit = 20
    seen: ClassVar[list[int]] = []

    def training_step(self, batch, batch_idx):
        type(self).seen.append(len(batch[0]))
        if len(batch[0]) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().training_step(batch, batch_idx)


def test_out_of_memory_retries_with_half_the_batch_then_succeeds(recwarn):
    OutOfMemoryAbove.seen.clear()
    dm = tuner_dm()
    result = VTSSTuner(CPU, ratios=[0, 1], folds=None, verbose=False).search(OutOfMemoryAbove(), dm)
    assert [c.status for c in result.candidates] == [
        "ok: batch size reduced from 64 to 16 (out of memory)"
    ] * 2
    assert all(math.isfinite(c.val_balanced_loss) for c in result.candidates)
    assert {64, 32, 16} <= set(OutOfMemoryAbove.seen)
    assert dm.batch_size == 64  # restored for the final fit
    assert any("retrying the candidate with batch size 32" in str(w.message) for w in recwarn)


def test_out_of_memory_below_the_floor_fails_that_candidate_with_the_numbers():
    class OnlyBigCandidates(OutOfMemoryAbove):
        limit = 10**6

        def training_step(self, batch, batch_idx):
            # the largest candidate's data do not fit, whatever the batch size
            big = len(self.trainer.train_dataloader.y) > 150
            self.limit = 0 if big else 10**6
            return super().training_step(batch, batch_idx)

    result = VTSSTuner(CPU, ratios=[0, 0.5, 2], folds=None, verbose=False).search(
        OnlyBigCandidates(), tuner_dm()
    )
    ok, half, big = result.candidates
    assert ok.status == half.status == "ok"
    assert re.fullmatch(
        r"failed: out of memory with batch size 16 \(floor 16\), 176 training rows x 3 "
        r"features on cpu",
        big.status,
    ), big.status
    assert big.val_balanced_loss is None
    assert result.selected_ratio in (0.0, 0.5)


def test_out_of_memory_everywhere_is_a_clear_error():
    class Always(OutOfMemoryAbove):
        limit = 0

    with pytest.raises(VTSSError, match="every candidate failed.*out of memory"):
        VTSSTuner(CPU, ratios=[0, 1], folds=None, verbose=False).search(Always(), tuner_dm())


def test_other_errors_in_a_candidate_are_not_swallowed():
    class Broken(Linear):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("a bug in the user's model")

    with pytest.raises(RuntimeError, match="a bug in the user's model"):
        VTSSTuner(CPU, ratios=[0, 1], verbose=False).search(Broken(), tuner_dm())


# ----------------------------------------------------------- must simply work


def test_non_contiguous_integer_labels_with_several_minority_classes():
    rng = np.random.default_rng(0)
    counts = {3: 90, 7: 30, 42: 12}
    rows = [rng.normal(loc=i, size=(n, 3)) for i, n in enumerate(counts.values())]
    data = pd.DataFrame(np.vstack(rows), columns=["a", "b", "c"])
    data["label"] = np.repeat(list(counts), list(counts.values()))
    data["colour"] = rng.choice(["red", "green", None], len(data))
    dm = TabularDataModule.from_frame(data, target="label")
    pl.seed_everything(0)
    result = VTSSTuner(CPU, ratios=[0, 0.5, 1], verbose=False).search(logistic(), dm)
    assert dm.class_names == ["3", "7", "42"]
    gaps = result.diagnostics["gaps"]
    assert set(gaps) == {"7", "42"} and gaps["42"] > gaps["7"] > 0
    assert [set(c.sizes) for c in result.candidates] == [{"7", "42"}] * 3
    assert result.candidates[2].sizes == gaps  # ratio 1 fills every gap
    assert all(c.status == "ok" and math.isfinite(c.val_balanced_loss) for c in result.candidates)
    assert any("colour" in n for n in result.diagnostics["notes"])  # imputed, and said so


def test_a_one_to_a_thousand_imbalance():
    rng = np.random.default_rng(1)
    n_neg, n_pos = 4000, 4
    x = rng.normal(size=(n_neg + n_pos, 2))
    x[n_neg:] += 2.0
    y = np.array([0] * n_neg + [1] * n_pos)
    dm = TabularDataModule.from_arrays(x, y, generator=SMOTEGenerator(k_neighbors=5))
    pl.seed_everything(0)
    with pytest.warns(UserWarning, match="k_neighbors is reduced"):
        tuner = VTSSTuner(CPU, ratios=[0, 1], folds=None, verbose=False)  # the hold-out
        result = tuner.search(logistic(), dm)
    counts = result.diagnostics["class_counts_train"]
    assert counts == {"0": 3200, "1": 3}
    assert result.candidates[1].sizes == {"1": 3197}
    assert all(math.isfinite(c.val_balanced_loss) for c in result.candidates)
    assert result.timing["pool_mb"] == pytest.approx(3197 * 2 * 4 / 2**20)


# ------------------------------------------------------- leakage, provably


class RecordingPreprocessor(TabularPreprocessor):
    """Records the row ids of every frame it is fitted on."""

    fits: ClassVar[list[set[int]]] = []

    def fit(self, frame):
        type(self).fits.append(set(frame["rid"].astype(int).tolist()))
        return super().fit(frame)


class SpyDataModule(TabularDataModule):
    def make_preprocessor(self, x_train):
        return RecordingPreprocessor([], scale=True).fit(x_train)


class SpyGenerator(SyntheticGenerator):
    """Frame generator that records the row ids it is fitted on."""

    input_kind = "frame"
    name = "spy"
    fits: ClassVar[list[set[int]]] = []

    def _fit(self, x, schema, seed):
        type(self).fits.append(set(x["rid"].astype(int).tolist()))
        self._x = x

    def _sample(self, n, seed):
        return self._x.sample(n, replace=True, random_state=seed).reset_index(drop=True)


class ConstantScorer(BaseScorer):
    def __init__(self):
        super().__init__(template=None, settings=None)

    def score(self, dm, sizes):
        dm.training_tensors(sizes)
        return 1.0 / (1 + sum(sizes.values()))


@pytest.mark.parametrize("folds", [None, 3])
def test_preprocessing_and_generators_never_see_validation_or_test_rows(folds):
    RecordingPreprocessor.fits.clear()
    SpyGenerator.fits.clear()
    data = frame(90, 30, seed=4)
    data.insert(0, "rid", np.arange(len(data)))
    test = frame(20, 20, seed=5)
    test.insert(0, "rid", 10_000 + np.arange(len(test)))
    dm = SpyDataModule.from_frame(data, target="y", test_frame=test, generator=SpyGenerator())
    dm.setup()
    engine = SearchEngine(ratios=[0, 1, 2], folds=folds, repeats=2 if folds else 1, verbose=False)
    engine.run(dm, ConstantScorer())
    y = dm._y_dev
    pos = dm.class_names.index("pos")
    if folds is None:
        splits = [(dm.holdout.train_index, dm.holdout.val_index)]
    else:
        splits = [(tr, va) for _, tr, va in dm.fold_indices(folds, 2)]
    # one preprocessing fit for the hold-out, then one per fold, in order
    pre = RecordingPreprocessor.fits
    assert len(pre) == 1 + (0 if folds is None else len(splits))
    assert pre[0] == set(dm.holdout.train_index.tolist())
    fold_fits = pre[1:] if folds else pre
    gen_fits = SpyGenerator.fits
    assert len(gen_fits) == len(splits)  # one minority class, one fit per split
    for seen_pre, seen_gen, (tr, va) in zip(fold_fits, gen_fits, splits, strict=True):
        assert seen_pre == set(tr.tolist())
        assert not seen_pre & set(va.tolist())
        assert seen_gen == set(tr[y[tr] == pos].tolist())
        assert not seen_gen & set(va.tolist())
    every = set().union(*pre, *gen_fits)
    assert max(every) < 10_000  # no test row, ever


# ------------------------------------------------------------ safe loading


def test_checkpoints_load_with_weights_only(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from vtss_lightning import VTSSCallback

    cb = VTSSCallback(ratios=[0, 1], folds=2, verbose=False)  # folds: the outer fit trains
    trainer = quiet_trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        default_root_dir=str(tmp_path),
        callbacks=[cb, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )
    trainer.fit(TabularClassifier(hidden_dims=[4]), datamodule=tuner_dm())
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "VTSSCallback" in str(k)]
    assert state["result"]["selected_sizes"] == cb.result.selected_sizes
    assert ckpt["hyper_parameters"]["hidden_dims"] == [4]


def test_the_package_never_unpickles_or_evaluates_strings():
    root = Path(__file__).resolve().parents[1] / "vtss_lightning"
    unsafe = re.compile(r"(?<![.\w])(eval|exec)\(|pickle\.loads?\(|joblib\.load\(")

    def bad(line: str) -> bool:
        torch_load = "torch.load(" in line and "weights_only=True" not in line
        return bool(unsafe.search(line)) or torch_load

    hits = [
        f"{path.relative_to(root)}:{i}: {line.strip()}"
        for path in root.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if bad(line)
    ]
    assert hits == []


def test_kfold_with_categories_missing_from_some_folds_keeps_one_width():
    """Found by the property test: a category absent from a fold's training rows used
    to change the encoded width and crash the model built for the hold-out."""
    data = pd.DataFrame(
        {
            "n": [-5.0, -3, -5, -5, -4, 3, 3, 0, -2, 1],
            "t": ["b", "1", "c d", "a", "b", "b", "1", "a", "a", "a"],
            "y": [1, 0, 1, 1, 1, 1, 0, 0, 0, 0],
        }
    )
    dm = TabularDataModule.from_frame(data, target="y", val_fraction=0.5)
    pl.seed_everything(0)
    result = VTSSTuner(CPU, ratios=[0, 1], folds=2, verbose=False).search(logistic(), dm)
    assert all(c.status == "ok" for c in result.candidates)
    for name, tr, va in dm.fold_indices(2):
        with dm.use_split(name, tr, va) as split:
            assert split.x_train.shape[1] == dm.holdout.x_train.shape[1] == 5
            absent = sorted(set(data["t"]) - set(data["t"].iloc[tr]))
            pre = split.preprocessor
            for cat in absent:  # encoded as zeros everywhere, as an unseen category
                j = list(pre.schema.names).index(f"t_{cat}")
                assert not split.x_train[:, j].any() and not split.x_val[:, j].any()
                assert all(j not in g for g in pre.schema.categorical_groups)


def test_a_validation_split_too_small_for_the_classes_is_a_clear_error():
    data = frame(n_neg=2, n_pos=2)
    with pytest.raises(VTSSError, match=r"val_fraction=0.2 puts 1 of 4 rows into validation"):
        TabularDataModule.from_frame(data, target="y").setup()


def test_smote_sampling_in_chunks_gives_the_same_rows(monkeypatch):
    """Chunked interpolation bounds memory for large pools without changing a row."""
    import vtss_lightning.generators.smote as smote
    from vtss_lightning.data.schema import FeatureSchema

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    x[:, 3:] = torch.nn.functional.one_hot(torch.randint(2, (60,), generator=g), 2).float()
    schema = FeatureSchema(n_features=5, numeric=(0, 1, 2), categorical_groups=((3, 4),))
    gen = SMOTEGenerator().fit(x, schema, seed=0)
    whole = gen.sample(1000, generator_seed=3)
    monkeypatch.setattr(smote, "_SAMPLE_CHUNK", 7)
    assert torch.equal(gen.sample(1000, generator_seed=3), whole)


# ------------------------------------------------------------ reliability, round two
def test_a_duplicated_target_column_is_refused_not_leaked(tmp_path):
    data = frame()
    path = tmp_path / "dup.csv"
    data.assign(extra=data["y"]).rename(columns={"extra": "y"}).to_csv(path, index=False)
    dm = TabularDataModule(path=str(path), target="y")  # pandas reads the copy as "y.1"
    with pytest.raises(VTSSError, match="target column 'y' appears more than once"):
        dm.setup()


def test_a_missing_target_lists_the_columns_and_says_when_there_are_more():
    wide = pd.DataFrame(np.zeros((4, 30)), columns=[f"c{i}" for i in range(30)])
    with pytest.raises(VTSSError, match=r"columns are: c0, .*c19, … \(30 columns\)"):
        TabularDataModule.from_frame(wide, target="label").setup()


@pytest.mark.parametrize("budget", [{"max_epochs": 0}, {"max_steps": 0}])
def test_a_zero_budget_is_refused(budget):
    name = next(iter(budget))
    with pytest.raises(VTSSError, match=f"{name}=0 trains nothing"):
        VTSSTuner({"accelerator": "cpu", **budget}, ratios=[0, 1])


def test_a_progress_file_with_invalid_utf8_is_read_like_a_torn_one(tmp_path, capsys):
    path = tmp_path / "progress.jsonl"
    dm = tuner_dm()
    tuner = VTSSTuner(CPU, ratios=[0, 1], folds=None)
    torch.manual_seed(0)
    first = tuner.search(logistic(), dm, progress_path=path)
    with path.open("ab") as fh:
        fh.write(b'{"split": 0, "candidate": 1, "loss": \xff\xfe}\n')  # not UTF-8
    torch.manual_seed(0)
    again = tuner.search(logistic(), tuner_dm(), progress_path=path)
    assert "2 fit(s) already done" in capsys.readouterr().out  # nothing trained again
    assert [c.val_balanced_loss for c in again.candidates] == [
        c.val_balanced_loss for c in first.candidates
    ]


def test_sizes_that_cannot_fit_in_memory_are_refused_in_one_line():
    dm = tuner_dm()
    dm.setup()
    with pytest.raises(VTSSError, match=r"synthetic pool would need .* GiB .* more than the"):
        dm.prepare_pool({1: 10**12})
