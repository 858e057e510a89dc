"""DataModules: nested pool prefixes, exact sizes, leakage-free fitting, CSV input, errors."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from vtss_lightning import SyntheticAugmentationDataModule, TabularDataModule, VTSSError, generators
from vtss_lightning.data.loaders import TensorBatches
from vtss_lightning.generators import SMOTEGenerator, SyntheticGenerator

# --------------------------------------------------------------------------- helpers


def imbalanced_arrays(counts=(60, 15), d=2, seed=0):
    """Features whose column 0 is a unique row id; labels 0..K-1 with ``counts`` rows."""
    rng = np.random.default_rng(seed)
    n = sum(counts)
    x = np.c_[np.arange(n), rng.normal(size=(n, d))].astype(np.float32)
    y = np.concatenate([np.full(c, k) for k, c in enumerate(counts)]).astype(np.int64)
    return x, y


def expected_sizes(ratio, gaps):
    return {k: int(np.floor(ratio * g + 0.5)) for k, g in gaps.items() if g > 0}


class SpyTensorGenerator(SyntheticGenerator):
    """Records every batch of rows it is fitted on; samples by repeating them."""

    input_kind = "tensor"
    name = "spy"
    seen: ClassVar[list] = []

    def _fit(self, x, schema, seed):
        type(self).seen.append(x.clone())
        self._x = x

    def _sample(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        return self._x[torch.randint(len(self._x), (n,), generator=g)]


class SpyFrameGenerator(SyntheticGenerator):
    """Frame-kind spy: sees raw DataFrame rows, returns resampled raw rows."""

    input_kind = "frame"
    name = "spy-frame"
    seen: ClassVar[list] = []

    def _fit(self, x, schema, seed):
        assert isinstance(x, pd.DataFrame)
        type(self).seen.append(x.copy())
        self._x = x

    def _sample(self, n, seed):
        return self._x.sample(n, replace=True, random_state=seed).reset_index(drop=True)


@pytest.fixture(autouse=True)
def _clear_spies():
    SpyTensorGenerator.seen.clear()
    SpyFrameGenerator.seen.clear()
    yield


def ids_of_class(y, idx, k):
    """Row ids (= development row positions) of class ``k`` among ``idx``."""
    idx = np.asarray(idx)
    return set(idx[y[idx] == k].tolist())


# ----------------------------------------------------------------- pool & sizes


def test_pool_prefixes_are_nested_and_sizes_exact():
    x, y = imbalanced_arrays((80, 20, 10))
    dm = SyntheticAugmentationDataModule(x, y, seed=3)
    dm.setup()
    counts = dm.holdout.class_counts
    small, large = {1: 7, 2: 5}, {1: 30, 2: 44}
    dm.prepare_pool(large)
    xs, ys = dm.training_tensors(small)
    xl, yl = dm.training_tensors(large)
    n_real = sum(counts)
    # real rows first, unchanged
    assert torch.equal(xs[:n_real], dm.holdout.x_train)
    assert torch.equal(xl[:n_real], dm.holdout.x_train)
    # per class: the small candidate's synthetic rows are the first rows of the large one's
    for k in (1, 2):
        syn_s = xs[n_real:][ys[n_real:] == k]
        syn_l = xl[n_real:][yl[n_real:] == k]
        assert len(syn_s) == small[k] and len(syn_l) == large[k]
        assert torch.equal(syn_s, syn_l[: small[k]])
    # exact per-class counts: real + synthetic
    assert torch.bincount(ys, minlength=3).tolist() == [counts[0], counts[1] + 7, counts[2] + 5]
    assert torch.bincount(yl, minlength=3).tolist() == [counts[0], counts[1] + 30, counts[2] + 44]
    # the pool is not redrawn for a covered request
    pool = dm.holdout.pool
    dm.prepare_pool({1: 3})
    assert dm.holdout.pool is pool


def test_size_zero_gives_the_real_rows_only():
    x, y = imbalanced_arrays()
    dm = SyntheticAugmentationDataModule(x, y, seed=0)
    dm.setup()
    xt, yt = dm.training_tensors({1: 0})
    assert torch.equal(xt, dm.holdout.x_train) and torch.equal(yt, dm.holdout.y_train)


# Tiny settings: every generator the package exports, each fitted in seconds.
NESTING_GENERATORS = {
    "SMOTEGenerator": lambda: generators.SMOTEGenerator(k_neighbors=3),
    "JitterGenerator": lambda: generators.JitterGenerator(scale=0.3),
    "GaussianGenerator": lambda: generators.GaussianGenerator(),
    "RandomOversampler": lambda: generators.RandomOversampler(),
    "GaussianCopulaGenerator": lambda: generators.GaussianCopulaGenerator(),
    "CTGANGenerator": lambda: generators.CTGANGenerator(epochs=1, batch_size=10),
    "TVAEGenerator": lambda: generators.TVAEGenerator(epochs=1, batch_size=10),
    "VAEGenerator": lambda: generators.VAEGenerator(steps=3, width=8),
    "DiffusionGenerator": lambda: generators.DiffusionGenerator(steps=3, width=8, sample_steps=2),
}
#: Image-only generators, whose nested prefixes are tested on images where they live.
IMAGE_ONLY = {"DiffusersGenerator": "tests/test_diffusers_generator.py"}


def nesting_dm(name: str, chunk_rows: int) -> TabularDataModule:
    """A fresh DataModule (numeric + categorical columns) whose pool has small chunks."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=60),
            "b": rng.normal(size=60),
            "colour": rng.choice(["red", "green", "blue"], 60),
            "y": ["neg"] * 45 + ["pos"] * 15,
        }
    )
    dm = TabularDataModule.from_frame(
        frame, target="y", generator=NESTING_GENERATORS[name](), seed=4
    )
    dm.setup()
    dm.pool_builder.chunk_rows = chunk_rows
    return dm


def synthetic_rows(dm, m: int) -> torch.Tensor:
    """The synthetic rows class 1 trains on at size ``m`` (after the real rows)."""
    x, y = dm.training_tensors({1: m})
    n_real = len(dm.holdout.x_train)
    assert torch.equal(y[n_real:], torch.ones(m, dtype=torch.long))
    return x[n_real:]


def test_nesting_generators_cover_every_exported_generator():
    exported = {
        name
        for name in generators.__all__
        if issubclass(getattr(generators, name), SyntheticGenerator)
        and name != "SyntheticGenerator"
    }
    assert exported == set(NESTING_GENERATORS) | set(IMAGE_ONLY)


@pytest.mark.parametrize("name", sorted(NESTING_GENERATORS))
def test_pool_prefixes_are_nested_whatever_the_size_asked_first(name):
    # chunks of 7 rows: sizes 5, 12 and 20 end inside chunks 0, 1 and 2
    grows = nesting_dm(name, chunk_rows=7)  # asked small sizes first, then larger ones
    rows = {m: synthetic_rows(grows, m) for m in (0, 5, 12, 20)}
    largest = nesting_dm(name, chunk_rows=7)  # asked the largest size first
    full = synthetic_rows(largest, 20)
    d = grows.n_features
    assert full.shape == (20, d) and torch.isfinite(full).all()
    for m, got in rows.items():
        assert got.shape == (m, d)
        assert torch.equal(got, full[:m]), f"{name}: the first {m} rows moved"
        assert torch.equal(synthetic_rows(largest, m), full[:m])
    # a pool extended past what it held equals one drawn at that size at once
    assert torch.equal(grows.holdout.pool.rows[1], full)
    assert grows.holdout.pool.capacity == {1: 20}
    # size 0: an empty (0, d) block, from the pool and from one sample call
    assert grows.prepare_pool({1: 0}).take({1: 0})[0].shape == (0, d)
    split = grows.holdout
    empty = grows.pool_builder.sample(split, split.generators[1], 0, 123, "")
    assert empty.shape == (0, d) and empty.dtype == torch.float32


def test_pool_prefixes_are_nested_across_the_default_chunk_boundary():
    from vtss_lightning._random import POOL_CHUNK_ROWS

    small = nesting_dm("SMOTEGenerator", chunk_rows=POOL_CHUNK_ROWS)
    large = nesting_dm("SMOTEGenerator", chunk_rows=POOL_CHUNK_ROWS)
    m, big = POOL_CHUNK_ROWS - 3, POOL_CHUNK_ROWS + 5
    assert torch.equal(synthetic_rows(small, m), synthetic_rows(large, big)[:m])
    # what the chunks guard against: one SMOTE call of `big` rows starts unlike one of `m`
    split = large.holdout
    one_call = large.pool_builder.sample(split, split.generators[1], big, 0, "")
    assert not torch.equal(
        one_call[:m], large.pool_builder.sample(split, split.generators[1], m, 0, "")
    )


def test_sample_of_zero_rows_is_an_empty_matrix():
    x, y = imbalanced_arrays()
    dm = SyntheticAugmentationDataModule(x, y, seed=0)
    dm.setup()
    dm.prepare_pool({1: 4})
    split = dm.holdout
    rows = dm.pool_builder.sample(split, split.generators[1], 0, 7, "")
    assert rows.shape == (0, split.x_train.shape[1])
    assert rows.device == split.x_train.device


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0, 1.25, 2.0])
def test_set_synthetic_ratio_is_round_ratio_times_gap(ratio):
    x, y = imbalanced_arrays((61, 14))
    dm = SyntheticAugmentationDataModule(x, y, seed=0)
    dm.setup()
    gaps = dm.class_gaps()
    sizes = dm.set_synthetic_ratio(ratio)
    assert sizes == expected_sizes(ratio, gaps)
    assert dm.synthetic_sizes == sizes
    _, yt = dm.training_tensors()
    counts = dm.holdout.class_counts
    assert torch.bincount(yt, minlength=2).tolist() == [counts[0], counts[1] + sizes.get(1, 0)]
    if ratio == 1.0:  # full balance
        assert torch.bincount(yt).tolist() == [counts[0], counts[0]]


def test_default_synthetic_ratio_sets_sizes_before_any_search():
    x, y = imbalanced_arrays((60, 15))
    dm = SyntheticAugmentationDataModule(x, y, synthetic_ratio=0.5, seed=0)
    dm.setup()
    assert dm.synthetic_sizes == expected_sizes(0.5, dm.class_gaps())


def test_multiclass_gaps_and_sizes():
    x, y = imbalanced_arrays((100, 40, 10, 25))
    dm = SyntheticAugmentationDataModule(x, y, val_fraction=0.2, seed=0)
    dm.setup()
    counts = dm.holdout.class_counts
    assert counts == [80, 32, 8, 20]  # stratified split keeps the proportions exactly here
    gaps = dm.class_gaps()
    assert gaps == {0: 0, 1: 48, 2: 72, 3: 60}
    sizes = dm.set_synthetic_ratio(1.25)
    assert sizes == {1: 60, 2: 90, 3: 75}
    assert sizes.get(0, 0) == 0  # the majority class gets no synthetic rows
    _, yt = dm.training_tensors()
    assert torch.bincount(yt, minlength=4).tolist() == [80, 92, 98, 95]
    sizes = dm.set_synthetic_ratio(0.5)
    assert sizes == {1: 24, 2: 36, 3: 30}


def test_ratio_rounds_half_up():
    x, y = imbalanced_arrays((60, 15))  # train 48 / 12 -> gap 36
    dm = SyntheticAugmentationDataModule(x, y, seed=0)
    dm.setup()
    assert dm.class_gaps()[1] == 36
    # 36 * 0.125 = 4.5 -> 5 (Python's round would give 4)
    assert dm.set_synthetic_ratio(0.125) == {1: 5}


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_bad_ratio_is_a_vtss_error(bad):
    x, y = imbalanced_arrays()
    dm = SyntheticAugmentationDataModule(x, y)
    dm.setup()
    with pytest.raises(VTSSError, match="ratio"):
        dm.set_synthetic_ratio(bad)


def test_set_synthetic_sizes_validates():
    x, y = imbalanced_arrays()
    dm = SyntheticAugmentationDataModule(x, y)
    dm.setup()
    with pytest.raises(VTSSError, match="out of range"):
        dm.set_synthetic_sizes({5: 3})
    with pytest.raises(VTSSError, match=">= 0"):
        dm.set_synthetic_sizes({1: -1})


# ----------------------------------------------------------------- no leakage


def test_tensor_generator_sees_only_training_rows_of_its_class():
    x, y = imbalanced_arrays((60, 15, 12))
    dm = SyntheticAugmentationDataModule(x, y, generator=SpyTensorGenerator(), seed=2)
    dm.setup()
    dm.prepare_pool({1: 10, 2: 10})
    train, val = dm.holdout.train_index, dm.holdout.val_index
    assert len(SpyTensorGenerator.seen) == 2  # one generator per minority class
    for k, rows in zip((1, 2), SpyTensorGenerator.seen, strict=True):
        seen_ids = set(rows[:, 0].long().tolist())
        assert seen_ids == ids_of_class(y, train, k)  # all of the class's train rows ...
        assert not seen_ids & set(val.tolist())  # ... and no validation row
    # the majority class never gets a generator
    assert set(dm.holdout.generators) == {1, 2}


def test_generator_sees_no_test_rows():
    x, y = imbalanced_arrays((60, 15))
    x_test = x.copy()
    x_test[:, 0] += 1000  # test ids are disjoint from development ids
    dm = SyntheticAugmentationDataModule(x, y, x_test, y, generator=SpyTensorGenerator(), seed=0)
    dm.setup()
    dm.prepare_pool({1: 5})
    seen = set(SpyTensorGenerator.seen[0][:, 0].long().tolist())
    assert max(seen) < 1000
    assert dm.has_test and len(dm.x_test) == len(y)


def test_frame_generator_sees_only_training_rows():
    x, y = imbalanced_arrays((60, 15))
    frame = pd.DataFrame(x[:, 1:], columns=["a", "b"])
    frame.insert(0, "rid", np.arange(len(y)))
    frame["label"] = np.where(y == 1, "pos", "neg")
    dm = TabularDataModule.from_frame(frame, target="label", generator=SpyFrameGenerator(), seed=4)
    dm.setup()
    pos = dm.class_names.index("pos")
    dm.prepare_pool({pos: 8})
    (rows,) = SpyFrameGenerator.seen
    assert list(rows.columns) == ["rid", "a", "b"]  # raw columns, no target
    seen = set(rows["rid"].tolist())
    assert seen == ids_of_class(y, dm.holdout.train_index, 1)
    assert not seen & set(dm.holdout.val_index.tolist())
    # samples are encoded with the training-fitted preprocessing
    synth_x, synth_y = dm.holdout.pool.take({pos: 8})
    assert synth_x.shape == (8, dm.n_features) and (synth_y == pos).all()


def test_kfold_generator_sees_only_that_folds_training_rows():
    x, y = imbalanced_arrays((60, 15))
    dm = SyntheticAugmentationDataModule(x, y, generator=SpyTensorGenerator(), seed=5)
    dm.setup()
    name, tr, va = next(dm.fold_indices(3))
    assert name == "fold 1.1"
    with dm.use_split(name, tr, va) as split:
        assert dm.active is split
        dm.prepare_pool({1: 5})
        seen = set(SpyTensorGenerator.seen[-1][:, 0].long().tolist())
        assert seen == ids_of_class(y, tr, 1)
        assert not seen & set(va.tolist())
        # the fold's own gap, not the hold-out's
        assert dm.class_gaps() == split.gaps
        assert set(split.x_val[:, 0].long().tolist()) == set(va.tolist())
    assert dm.active is dm.holdout  # restored after the fold


def test_fold_indices_partition_the_development_rows():
    x, y = imbalanced_arrays((60, 15))
    dm = SyntheticAugmentationDataModule(x, y, seed=0)
    dm.setup()
    folds = list(dm.fold_indices(3, repeats=2))
    assert len(folds) == 6
    for r in range(2):
        vals = np.concatenate([va for _, _, va in folds[3 * r : 3 * r + 3]])
        assert sorted(vals.tolist()) == list(range(len(y)))
    for _, tr, va in folds:
        assert not set(tr) & set(va)
    with pytest.raises(VTSSError, match="fewer than folds"):
        list(dm.fold_indices(20))


def test_scaler_is_fitted_on_training_rows_only():
    rng = np.random.default_rng(0)
    n0, n1 = 80, 20
    frame = pd.DataFrame({"u": rng.normal(5.0, 3.0, n0 + n1), "v": rng.exponential(2.0, n0 + n1)})
    frame["y"] = [0] * n0 + [1] * n1
    dm = TabularDataModule.from_frame(frame, target="y", seed=1)
    dm.setup()
    h = dm.holdout
    torch.testing.assert_close(h.x_train.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(h.x_train.std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    raw = frame[["u", "v"]].to_numpy()
    mu, sd = raw[h.train_index].mean(0), raw[h.train_index].std(0)
    expected_val = torch.as_tensor((raw[h.val_index] - mu) / sd, dtype=torch.float32)
    torch.testing.assert_close(h.x_val, expected_val, atol=1e-5, rtol=1e-5)
    # validation rows do not take part: they are not 0-mean under the train statistics
    assert h.x_val.mean(0).abs().max() > 1e-3


def test_scaler_ignores_shifted_validation_and_test_rows():
    # Make validation rows far from training rows: if they leaked into the scaler,
    # the training rows would not be centred.
    rng = np.random.default_rng(1)
    x, y = imbalanced_arrays((60, 15))
    frame = pd.DataFrame({"u": rng.normal(size=len(y))})
    frame["y"] = y
    probe = TabularDataModule.from_frame(frame, target="y", seed=2)
    probe.setup()
    frame.loc[probe.holdout.val_index, "u"] += 100.0
    test = pd.DataFrame({"u": rng.normal(size=10) + 50.0, "y": [0] * 5 + [1] * 5})
    dm = TabularDataModule.from_frame(frame, target="y", test_frame=test, seed=2)
    dm.setup()
    assert np.array_equal(dm.holdout.val_index, probe.holdout.val_index)
    assert abs(float(dm.holdout.x_train.mean())) < 1e-5
    assert float(dm.holdout.x_val.mean()) > 50.0  # ~100 / sd_train
    assert float(dm.x_test.mean()) > 25.0


# ----------------------------------------------------------------- CSV input


def write_csv(path, n0=60, n1=20, seed=0):
    rng = np.random.default_rng(seed)
    n = n0 + n1
    frame = pd.DataFrame(
        {
            # dyadic values survive the CSV round trip exactly
            "age": rng.integers(20, 80, n) / 4,
            "income": rng.integers(-400, 400, n) / 8,
            "color": rng.choice(["red", "green", "blue"], n),
            "label": ["no"] * n0 + ["yes"] * n1,
        }
    )
    frame.loc[[i for i in (3, 11, 17, 40, 55, 66, 71) if i < n], "color"] = np.nan
    frame.to_csv(path, index=False)
    return frame


def test_csv_with_categorical_and_string_labels(tmp_path):
    path = tmp_path / "train.csv"
    write_csv(path)
    dm = TabularDataModule(path=str(path), target="label", generator=SMOTEGenerator(), seed=0)
    dm.setup()
    assert dm.class_names == ["no", "yes"]
    assert dm.num_classes == 2
    schema = dm.schema
    assert schema.numeric == (0, 1)
    assert schema.categorical_groups == ((2, 3, 4),)
    assert dm.n_features == 5
    assert any("imput" in note and "color" in note for note in dm.notes)
    # real encoded rows are one-hot (imputed missing values included)
    block = dm.holdout.x_train[:, 2:5]
    assert torch.equal(block.sum(1), torch.ones(len(block)))
    # SMOTE rows keep an exact one-hot block
    dm.set_synthetic_ratio(1.5)
    dm.prepare_pool(dm.synthetic_sizes)
    synth, _ = dm.holdout.pool.take(dm.synthetic_sizes)
    assert len(synth) == dm.synthetic_sizes[1] > 0
    block = synth[:, 2:5]
    assert torch.all((block == 0) | (block == 1))
    assert torch.equal(block.sum(1), torch.ones(len(block)))
    # numeric columns are interpolated, not copied
    assert not torch.all(torch.isin(synth[:, 0], dm.holdout.x_train[:, 0]))


def test_from_frame_matches_csv(tmp_path):
    path = tmp_path / "train.csv"
    frame = write_csv(path)
    via_csv = TabularDataModule(path=str(path), target="label", seed=7)
    via_frame = TabularDataModule.from_frame(frame, target="label", seed=7)
    for dm in (via_csv, via_frame):
        dm.setup()
    assert via_csv.class_names == via_frame.class_names
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(via_csv.holdout, name), getattr(via_frame.holdout, name)), name
    assert via_csv.notes == via_frame.notes


def test_from_arrays_matches_csv(tmp_path):
    frame = write_csv(tmp_path / "full.csv").drop(columns=["color"])
    path = tmp_path / "numeric.csv"
    frame.to_csv(path, index=False)
    x = frame[["age", "income"]].to_numpy()
    y = frame["label"].to_numpy()
    via_csv = TabularDataModule(path=str(path), target="label", seed=3)
    via_arrays = TabularDataModule.from_arrays(x, y, x_test=x[:10], y_test=y[:10], seed=3)
    for dm in (via_csv, via_arrays):
        dm.setup()
    assert via_arrays.class_names == ["no", "yes"]
    for name in ("x_train", "y_train", "x_val", "y_val"):
        assert torch.equal(getattr(via_csv.holdout, name), getattr(via_arrays.holdout, name)), name
    assert via_arrays.has_test and not via_csv.has_test
    assert torch.equal(
        via_arrays.x_test, via_csv.holdout.preprocessor.transform(frame.iloc[:10, :2])
    )


def test_test_path_is_encoded_with_training_statistics(tmp_path):
    write_csv(tmp_path / "train.csv")
    test = write_csv(tmp_path / "test.csv", n0=10, n1=10, seed=9)
    dm = TabularDataModule(
        path=str(tmp_path / "train.csv"), target="label", test_path=str(tmp_path / "test.csv")
    )
    dm.setup()
    assert dm.x_test.shape == (20, dm.n_features)
    assert dm.y_test.tolist() == [0] * 10 + [1] * 10
    expected = dm.holdout.preprocessor.transform(test.drop(columns=["label"]))
    assert torch.equal(dm.x_test, expected)


# ----------------------------------------------------------------- errors


def test_error_missing_path(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(VTSSError, match="nope.csv"):
        TabularDataModule(path=str(missing), target="label")


def test_error_missing_target_column(tmp_path):
    path = tmp_path / "train.csv"
    write_csv(path)
    dm = TabularDataModule(path=str(path), target="outcome")
    with pytest.raises(VTSSError, match="'outcome' not found"):
        dm.setup()


def test_error_path_without_target(tmp_path):
    path = tmp_path / "train.csv"
    write_csv(path)
    with pytest.raises(VTSSError, match="target"):
        TabularDataModule(path=str(path))


def test_error_only_one_class():
    frame = pd.DataFrame({"a": np.arange(20.0), "y": ["x"] * 20})
    dm = TabularDataModule.from_frame(frame, target="y")
    with pytest.raises(VTSSError, match="only one class"):
        dm.setup()


def test_error_class_with_one_row():
    frame = pd.DataFrame({"a": np.arange(21.0), "y": ["a"] * 20 + ["b"]})
    dm = TabularDataModule.from_frame(frame, target="y")
    with pytest.raises(VTSSError, match="'b' has 1 row"):
        dm.setup()


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5])
def test_error_bad_val_fraction(bad, tmp_path):
    path = tmp_path / "train.csv"
    write_csv(path)
    with pytest.raises(VTSSError, match="val_fraction"):
        TabularDataModule(path=str(path), target="label", val_fraction=bad)
    with pytest.raises(VTSSError, match="val_fraction"):
        SyntheticAugmentationDataModule(*imbalanced_arrays(), val_fraction=bad)


def test_error_both_or_neither_path_and_dataset(tmp_path):
    path = tmp_path / "train.csv"
    write_csv(path)
    with pytest.raises(VTSSError, match="exactly one"):
        TabularDataModule(path=str(path), target="label", dataset="breast_cancer")
    with pytest.raises(VTSSError, match="exactly one"):
        TabularDataModule(target="label")


def test_error_unknown_dataset():
    with pytest.raises(VTSSError, match="unknown dataset"):
        TabularDataModule(dataset="mnist_please")


def test_error_use_before_setup():
    dm = SyntheticAugmentationDataModule(*imbalanced_arrays())
    with pytest.raises(VTSSError, match="not set up"):
        dm.class_gaps()


# ----------------------------------------------------------------- TensorBatches


def _epoch(batches):
    return [(bx.clone(), by.clone()) for bx, by in batches]


def test_tensor_batches_cover_every_row_once_per_epoch():
    n = 53
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(n)
    tb = TensorBatches(x, y, batch_size=10, shuffle=True, seed=0)
    assert len(tb) == 6
    epochs = [_epoch(tb) for _ in range(3)]
    for ep in epochs:
        assert [len(by) for _, by in ep] == [10, 10, 10, 10, 10, 3]
        ids = torch.cat([by for _, by in ep])
        assert sorted(ids.tolist()) == list(range(n))
        xs = torch.cat([bx for bx, _ in ep]).squeeze(1).long()
        assert torch.equal(xs, ids)  # x and y stay paired
    orders = [torch.cat([by for _, by in ep]).tolist() for ep in epochs]
    assert orders[0] != list(range(n))  # shuffled
    assert orders[0] != orders[1] != orders[2]  # reshuffled between epochs


def test_tensor_batches_deterministic_under_seed():
    x = torch.randn(40, 3)
    y = torch.arange(40)
    a = TensorBatches(x, y, batch_size=8, shuffle=True, seed=11)
    b = TensorBatches(x, y, batch_size=8, shuffle=True, seed=11)
    c = TensorBatches(x, y, batch_size=8, shuffle=True, seed=12)
    torch.manual_seed(0)
    ea = [_epoch(a) for _ in range(2)]
    torch.manual_seed(99)  # the global RNG plays no part
    eb = [_epoch(b) for _ in range(2)]
    ec = _epoch(c)
    for pa, pb in zip(ea, eb, strict=True):
        for (xa, ya), (xb, yb) in zip(pa, pb, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.cat([by for _, by in ec]).tolist() != torch.cat([by for _, by in ea[0]]).tolist()


def test_tensor_batches_full_batch_and_no_shuffle():
    x = torch.randn(30, 2)
    y = torch.arange(30)
    full = TensorBatches(x, y, batch_size=None, shuffle=True, seed=0)
    assert len(full) == 1
    ((bx, by),) = list(full)
    assert len(by) == 30 and sorted(by.tolist()) == list(range(30))
    fixed = TensorBatches(x, y, batch_size=7, shuffle=False)
    assert torch.cat([b for _, b in fixed]).tolist() == list(range(30))
    assert torch.cat([b for _, b in fixed]).tolist() == list(range(30))


def test_train_loader_full_batch_and_batch_size():
    x, y = imbalanced_arrays((60, 15))
    dm = SyntheticAugmentationDataModule(x, y, batch_size=16, seed=0)
    dm.setup()
    sizes = dm.set_synthetic_ratio(1.0)
    n = sum(dm.holdout.class_counts) + sizes[1]
    assert len(dm.make_train_loader(full_batch=True)) == 1
    loader = dm.make_train_loader()
    assert len(loader) == -(-n // 16)
    assert sum(len(by) for _, by in loader) == n
    val = list(dm.val_dataloader())
    assert sum(len(by) for _, by in val) == len(dm.holdout.val_index)
