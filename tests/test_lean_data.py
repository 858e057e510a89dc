"""The lean data path (issue 15): raw tables let go once encoded, float32 features,
chunked encoding and pools filled in place, all giving the rows the old path gave."""

from __future__ import annotations

import gc
import tracemalloc
import warnings
import weakref

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import old_pool
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import vtss_lightning.data.preprocessing as preprocessing
import vtss_lightning.data.sources as sources
import vtss_lightning.data.tabular as tabular
from vtss_lightning import SyntheticAugmentationDataModule, TabularDataModule, VTSSError
from vtss_lightning.data.columns import as_text, category_layout, category_pipeline
from vtss_lightning.data.features import take_rows
from vtss_lightning.data.loaders import TensorBatches
from vtss_lightning.data.preprocessing import TabularPreprocessor
from vtss_lightning.data.sources import read_csv_lean

# --------------------------------------------------------------------------- helpers


def table(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Numbers on several scales, ints, missing values, two categorical columns and a
    0/1 label with ~15% ones."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "big": rng.normal(2000.0, 5.0, n),
            "count": rng.integers(0, 40, n),
            "gappy": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
            "tiny": rng.normal(1.0, 1e-3, n),
            "city": rng.choice(["ams", "ber", "cph", None], n),
            "plan": rng.choice(["a", "b"], n),
        }
    )
    frame["label"] = (rng.random(n) < 0.15).astype(int)
    return frame


def old_encoding(train, frames, categorical, layout, scale=True, max_categories=None):
    """The encoding before issue 15: one ColumnTransformer over whole float64 tables."""
    numeric = [c for c in train.columns if c not in categorical]
    steps = [("impute", SimpleImputer(strategy="median", keep_empty_features=True))]
    steps += [("scale", StandardScaler())] if scale else []
    transformer = ColumnTransformer(
        [
            ("num", Pipeline(steps), numeric),
            ("cat", category_pipeline(layout, max_categories), categorical),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )

    def text(frame):
        return frame.assign(**{c: as_text(frame[c]) for c in categorical})

    transformer.fit(text(train))
    encode = [np.asarray(transformer.transform(text(f)), np.float64) for f in frames]
    return [torch.as_tensor(e.astype(np.float32)) for e in encode]


def keep_raw(monkeypatch) -> None:
    """DataModules that never let their raw rows go (the path before issue 15)."""
    monkeypatch.setattr(
        SyntheticAugmentationDataModule, "release_raw", lambda self: False, raising=True
    )


# ------------------------------------------------------------- raw rows let go


def test_setup_lets_the_read_table_go_and_keeps_float32_features(tmp_path, monkeypatch):
    table().to_csv(tmp_path / "train.csv", index=False)
    table(200, seed=1).to_csv(tmp_path / "test.csv", index=False)
    read = []

    def recording_read(path, what="path"):
        frame = sources.read_table(path, what)
        read.append(weakref.ref(frame))
        return frame

    monkeypatch.setattr(tabular, "read_table", recording_read)
    dm = TabularDataModule(
        path=str(tmp_path / "train.csv"), target="label", test_path=str(tmp_path / "test.csv")
    )
    dm.setup()
    gc.collect()
    assert len(read) == 2 and all(ref() is None for ref in read)  # no reference kept
    assert dm._frames is None and dm._x_dev is None and dm._x_test_raw is None
    for t in (dm.holdout.x_train, dm.holdout.x_val, dm.x_test):
        assert t.dtype == torch.float32 and t.is_contiguous()
    x, y = dm.training_tensors(dm.sizes_for_ratio(1.0))
    assert x.dtype == torch.float32 and len(x) == len(y)


def test_a_frame_generator_keeps_the_raw_rows_it_is_fitted_on():
    from test_data import SpyFrameGenerator

    dm = TabularDataModule.from_frame(table(), "label", generator=SpyFrameGenerator())
    dm.setup()
    assert dm._x_dev is not None  # fitted on raw rows at pool time
    assert dm.prepare_pool({1: 5}).capacity == {1: 5}


def test_the_callers_frame_is_shared_not_copied_nor_changed():
    frame = table()
    before = frame.copy()
    dm = TabularDataModule.from_frame(frame, "label")
    features, _, _, _ = dm.load_data()
    assert np.shares_memory(features["big"].to_numpy(), frame["big"].to_numpy())
    dm.setup()
    pd.testing.assert_frame_equal(frame, before)  # label and index untouched


@pytest.mark.parametrize("source", ["csv", "frame"])
def test_folds_and_the_all_rows_refit_reload_what_they_need(tmp_path, monkeypatch, source):
    data, test = table(), table(200, seed=1)

    def build():
        if source == "frame":
            return TabularDataModule.from_frame(data, "label", test_frame=test, seed=3)
        data.to_csv(tmp_path / "train.csv", index=False)
        test.to_csv(tmp_path / "test.csv", index=False)
        return TabularDataModule(
            path=str(tmp_path / "train.csv"),
            target="label",
            test_path=str(tmp_path / "test.csv"),
            seed=3,
        )

    def encodings(dm, lean):
        dm.setup()
        out = [dm.holdout.x_train, dm.holdout.x_val, dm.x_test]
        for name, train, val in dm.fold_indices(3):
            with dm.use_split(name, train, val) as split:
                out += [split.x_train, split.x_val, dm.prepare_pool({1: 40}).rows[1]]
        dm.use_all_rows()
        assert (dm._x_dev is None) == lean  # let go again after the last refit
        return out + [dm.active.x_train, dm.x_test, dm.prepare_pool({1: 40}).rows[1]]

    lean = encodings(build(), True)
    keep_raw(monkeypatch)
    kept = encodings(build(), False)
    assert all(torch.equal(a, b) for a, b in zip(lean, kept, strict=True))


@pytest.mark.parametrize("source", ["builtin", "arrays"])
def test_images_are_let_go_once_encoded_and_read_again_for_folds(monkeypatch, source):
    from vtss_lightning.data.image import ImageDataModule
    from vtss_lightning.data.image_sources import load_digit_images

    def build():
        if source == "builtin":
            return ImageDataModule(dataset="digits_binary", seed=2)
        x, y, *_ = load_digit_images("digits_binary")
        return ImageDataModule(x=x, y=y, seed=2)

    def encodings(dm, lean):
        dm.setup()
        assert (dm._loaded is None) == lean  # the read images are not kept beside the rows
        out = [dm.holdout.x_train, dm.holdout.x_val]
        for name, train, val in dm.fold_indices(2):
            with dm.use_split(name, train, val) as split:
                out += [split.x_train, split.x_val, dm.prepare_pool({1: 30}).rows[1]]
        dm.use_all_rows()
        return out + [dm.active.x_train, dm.prepare_pool({1: 30}).rows[1]]

    lean = encodings(build(), True)
    keep_raw(monkeypatch)
    kept = encodings(build(), False)
    assert all(torch.equal(a, b) for a, b in zip(lean, kept, strict=True))


def test_a_file_changed_before_a_refit_is_an_error(tmp_path):
    path = tmp_path / "train.csv"
    table().to_csv(path, index=False)
    dm = TabularDataModule(path=str(path), target="label")
    dm.setup()
    changed = table()
    changed["label"] = 1 - changed["label"]
    changed.to_csv(path, index=False)
    with pytest.raises(VTSSError, match="changed since setup"):
        dm.use_all_rows()


def test_a_subclass_with_its_own_loading_keeps_its_rows():
    class Own(SyntheticAugmentationDataModule):
        def load_data(self):
            return super().load_data()

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 3)), (rng.random(80) < 0.3).astype(int)
    own, plain = Own(x, y), SyntheticAugmentationDataModule(x, y)
    own.setup()
    plain.setup()
    assert own._x_dev is not None and plain._x_dev is None
    assert torch.equal(own.holdout.x_train, plain.holdout.x_train)


# ------------------------------------------------------------------- encoding


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("max_categories", [None, 3])
def test_encoding_equals_the_whole_table_construction(scale, max_categories):
    frame = table(3000).drop(columns="label")
    train, other = frame.iloc[:2400], frame.iloc[2400:].reset_index(drop=True)
    categorical = ["city", "plan"]
    layout = category_layout(frame, categorical)
    pre = TabularPreprocessor(categorical, scale, layout, max_categories).fit(train)
    new = [pre.transform(train), pre.transform(other)]
    old = old_encoding(train, [train, other], categorical, layout, scale, max_categories)
    for a, b in zip(new, old, strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=2**-23, atol=1e-7)  # float32 rounding at most


def test_chunked_encoding_and_rows_in_place_give_the_same_rows(monkeypatch):
    frame = table(500).drop(columns="label")
    rows = np.sort(np.random.default_rng(0).choice(500, 350, replace=False))
    layout = category_layout(frame, ["city", "plan"])
    whole = TabularPreprocessor(["city", "plan"], layout=layout).fit(take_rows(frame, rows))
    expected = whole.transform(frame)
    monkeypatch.setattr(preprocessing, "ENCODE_CHUNK_ROWS", 7)
    chunked = TabularPreprocessor(["city", "plan"], layout=layout).fit(frame, rows)
    assert chunked.schema == whole.schema and chunked.imputed_columns == whole.imputed_columns
    assert torch.equal(chunked.transform(frame), expected)
    assert torch.equal(chunked.transform_rows(frame, rows), expected[rows])


def test_an_overflow_in_a_later_chunk_names_the_same_value(monkeypatch):
    train = pd.DataFrame({"v": np.linspace(-1.0, 1.0, 50)})
    test = pd.DataFrame({"v": np.r_[np.zeros(30), 1e38, 3e38, np.zeros(5)]})
    pre = TabularPreprocessor([]).fit(train)
    with pytest.raises(VTSSError) as whole:
        pre.transform(test, what="test data")
    monkeypatch.setattr(preprocessing, "ENCODE_CHUNK_ROWS", 4)
    with pytest.raises(VTSSError) as chunked:
        pre.transform(test, what="test data")
    assert str(chunked.value) == str(whole.value)
    assert "column 'v' in the test data has a value of 3e+38" in str(whole.value)


def test_encoding_makes_no_whole_table_float64_copy():
    n, d = 300_000, 10
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(n, d)))
    frame.columns = [f"x{j}" for j in range(d)]
    pre = TabularPreprocessor([]).fit(frame.iloc[:1000])
    tracemalloc.start()
    encoded = pre.transform(frame)  # the float32 result is torch's, not traced
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert encoded.shape == (n, d)
    assert peak < 0.5 * n * d * 8  # the old path made several float64 copies


# ------------------------------------------------------------------ the pool


@pytest.mark.parametrize("chunk", [7, 64])
def test_pools_are_nested_and_equal_the_old_construction(chunk):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = np.r_[np.zeros(200), np.ones(60), np.full(40, 2)].astype(int)

    def dm():
        module = SyntheticAugmentationDataModule(x, y, seed=5)
        module.setup()
        module.pool_builder.chunk_rows = chunk
        return module

    grown, direct = dm(), dm()
    small = {k: v.clone() for k, v in grown.prepare_pool({1: 30, 2: 11}).rows.items()}
    big = grown.prepare_pool({1: 100, 2: 75}).rows  # grows in place of the small one
    once = direct.prepare_pool({1: 100, 2: 75}).rows
    for k, m in ((1, 30), (2, 11)):
        assert torch.equal(big[k][:m], small[k])  # the first m rows of a larger pool
    for k, m in ((1, 100), (2, 75)):
        assert torch.equal(big[k], once[k]) and torch.equal(big[k], old_pool(direct, k, m))
        assert big[k].dtype == torch.float32 and big[k].is_contiguous()


def test_training_tensors_keep_the_concatenated_layout():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = np.r_[np.zeros(120), np.ones(50), np.full(30, 2)].astype(int)
    dm = SyntheticAugmentationDataModule(x, y, seed=0)
    dm.setup()
    sizes = {1: 17, 2: 0}
    pool_x, pool_y = dm.prepare_pool({1: 40, 2: 20}).take(sizes)
    xs, ys = dm.training_tensors(sizes)
    split = dm.holdout
    assert torch.equal(xs, torch.cat([split.x_train, pool_x]))
    assert torch.equal(ys, torch.cat([split.y_train, pool_y]))
    both = {1: 17, 2: 9}
    xs, ys = dm.training_tensors(both)
    px, py = dm.holdout.pool.take(both)
    assert torch.equal(xs, torch.cat([split.x_train, px])) and torch.equal(
        ys[-9:], torch.full((9,), 2)
    )


def test_shuffled_batches_are_gathered_per_batch_with_the_same_rows():
    x, y = torch.randn(103, 3), torch.arange(103)
    loader = TensorBatches(x, y, batch_size=10, shuffle=True, seed=4)
    for epoch in range(2):
        order = torch.randperm(103, generator=torch.Generator().manual_seed(4 + epoch))
        batches = list(loader)
        assert len(batches) == 11
        assert torch.equal(torch.cat([b[0] for b in batches]), x[order])
        assert torch.equal(torch.cat([b[1] for b in batches]), y[order])


# ------------------------------------------------------------------ reading


def messy_csvs(tmp_path) -> list:
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "f": rng.normal(size=n),
            "i": rng.integers(0, 9, n),
            "s": rng.choice(["x", "y", ""], n),
            "b": rng.choice(["True", "False"], n),
        }
    )
    paths = [tmp_path / "clean.csv", tmp_path / "mixed.csv", tmp_path / "gz.csv.gz"]
    frame.to_csv(paths[0], index=False)
    mixed = frame.astype({"i": object, "b": object})
    mixed.loc[250, "i"] = "n/a?"  # text late in a number column
    mixed.loc[120, "b"] = None  # a missing value in the second block only
    mixed.loc[10, "f"] = np.nan
    mixed.to_csv(paths[1], index=False)
    frame.to_csv(paths[2], index=False)
    (tmp_path / "header.csv").write_text("a,b\n")
    (tmp_path / "index.csv").write_text("a,b\n0,1,2\n1,3,4\n")  # an implicit index column
    return [*paths, tmp_path / "header.csv", tmp_path / "index.csv"]


@pytest.mark.parametrize("block", [64, sources.CSV_BLOCK_ROWS])
def test_the_lean_csv_reader_reads_what_pandas_reads(tmp_path, monkeypatch, block):
    monkeypatch.setattr(sources, "CSV_BLOCK_ROWS", block)
    for path in messy_csvs(tmp_path):
        with warnings.catch_warnings():  # mixed types warn (DtypeWarning) in both readers
            warnings.simplefilter("ignore")
            expected, got = pd.read_csv(path), read_csv_lean(path)
        pd.testing.assert_frame_equal(got, expected, check_exact=True)
        for c in expected.select_dtypes(include="object").columns:
            assert got[c].map(type).equals(expected[c].map(type)), (path.name, c)
