"""Images: loading and scaling, built-in digits, real-row augmentation, the CNN, a search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image

from vtss_lightning import ImageDataModule, VTSSCallback, VTSSError
from vtss_lightning.data.image_augment import RandomShift, RealRowAugmentedBatches
from vtss_lightning.data.image_sources import load_digit_images
from vtss_lightning.generators import SMOTEGenerator
from vtss_lightning.models import ImageClassifier
from vtss_lightning.search.sample_grid import SAMPLES_NAME, write_sample_grid

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def _images(n0: int = 40, n1: int = 10, h: int = 6, w: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n0 + n1, h, w), dtype=np.uint8)
    y = np.array([0] * n0 + [1] * n1)
    return x, y


# ------------------------------------------------------------------ loading
def test_uint8_arrays_become_flat_rows_in_unit_range():
    x, y = _images()
    dm = ImageDataModule(x=x, y=y, x_test=x[:6], y_test=y[:6], seed=1)
    dm.setup()
    assert dm.schema.image_shape == (1, 6, 5) and dm.n_features == 30
    split = dm.holdout
    assert split.x_train.shape == (40, 30) and split.x_val.shape == (10, 30)
    assert split.x_train.dtype == torch.float32
    # Row i of x_train is image train_index[i] / 255, flattened.
    i = int(split.train_index[3])
    expected = torch.as_tensor(x[i], dtype=torch.float32).flatten() / 255
    assert torch.allclose(split.x_train[3], expected)
    assert dm.x_test.shape == (6, 30) and float(dm.x_test.max()) <= 1.0


def test_float_images_outside_unit_range_and_shape_mismatch_are_errors():
    x, y = _images()
    with pytest.raises(VTSSError, match=r"\[0, 1\]"):
        ImageDataModule(x=x.astype(np.float32), y=y).setup()
    dm = ImageDataModule(x=x, y=y, x_test=np.zeros((4, 7, 5), np.uint8), y_test=[0, 1, 0, 1])
    with pytest.raises(VTSSError, match="do not match"):
        dm.setup()
    with pytest.raises(VTSSError, match="exactly one"):
        ImageDataModule(x=x, y=y, dataset="digits_binary")
    with pytest.raises(VTSSError, match="unknown image dataset"):
        ImageDataModule(dataset="digits")


def test_torchvision_style_dataset_of_pil_images_matches_arrays():
    x, y = _images(h=7, w=7)
    fake = [(Image.fromarray(img, mode="L"), int(label)) for img, label in zip(x, y, strict=True)]
    from_ds = ImageDataModule(dataset=fake, test_dataset=fake[:5], seed=3)
    from_arr = ImageDataModule(x=x, y=y, x_test=x[:5], y_test=y[:5], seed=3)
    from_ds.setup()
    from_arr.setup()
    assert from_ds.schema.image_shape == (1, 7, 7)
    assert torch.equal(from_ds.holdout.x_train, from_arr.holdout.x_train)
    assert torch.equal(from_ds.x_test, from_arr.x_test)
    assert from_ds.class_names == ["0", "1"]


def test_raw_data_fast_path_and_class_subsampling():
    class RawDataset:  # like torchvision's MNIST: .data / .targets, no transform
        transform = None

        def __init__(self, n):
            self.data = torch.arange(n * 16, dtype=torch.uint8).reshape(n, 4, 4)
            self.targets = torch.arange(n) % 3

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):  # pragma: no cover - the fast path must not call it
            raise AssertionError("read item by item")

    dm = ImageDataModule(dataset=RawDataset(90), classes=[0, 2], max_per_class={"2": 7})
    x, y, _, _ = dm.load_data()
    assert x.shape == (37, 1, 4, 4) and sorted(np.bincount(y).tolist()) == [0, 7, 30]
    again, y2, _, _ = ImageDataModule(
        dataset=RawDataset(90), classes=[0, 2], max_per_class={"2": 7}
    ).load_data()
    assert torch.equal(x, again) and np.array_equal(y, y2)


def test_builtin_digits_have_fixed_imbalance_and_test_splits():
    x, y, xt, yt, _ = load_digit_images("digits_binary")
    assert x.shape[1:] == (1, 8, 8) and float(x.max()) == 1.0 and float(x.min()) == 0.0
    assert np.bincount(y).tolist() == [1533, 153] and np.bincount(yt).tolist() == [90, 20]
    x2, y2, _, _, _ = load_digit_images("digits_binary")
    assert torch.equal(x, x2) and np.array_equal(y, y2)
    x, y, xt, yt, _ = load_digit_images("digits_multiclass")
    assert np.bincount(y).tolist() == [140, 84, 50, 30, 18]
    assert np.bincount(yt).tolist() == [30] * 5
    # Dev and test images never overlap (compare pixel content).
    dev = {tuple(r.tolist()) for r in x.reshape(len(x), -1)}
    assert not any(tuple(r.tolist()) in dev for r in xt.reshape(len(xt), -1))
    # The run's seed changes the split, never which images form the data.
    a, b = (
        ImageDataModule(dataset="digits_multiclass", seed=0),
        ImageDataModule(dataset="digits_multiclass", seed=5),
    )
    assert torch.equal(a.load_data()[0], b.load_data()[0])


# --------------------------------------------------------------- augmentation
def test_transforms_touch_real_training_rows_only():
    x, y = _images(60, 20)
    marker = 7.0

    def mark(images: torch.Tensor) -> torch.Tensor:
        return torch.full_like(images, marker)

    dm = ImageDataModule(x=x, y=y, transforms=mark, batch_size=16, seed=2)
    dm.setup()
    sizes = dm.set_synthetic_ratio(1.0)
    pool_rows, _ = dm.prepare_pool(sizes).take(sizes)
    loader = dm.make_train_loader()
    assert isinstance(loader, RealRowAugmentedBatches)
    rows = torch.cat([xb for xb, _ in loader])
    marked = (rows == marker).all(1)
    assert int(marked.sum()) == len(dm.holdout.x_train)  # every real row, once
    unmarked = rows[~marked]
    assert not (unmarked == marker).any()
    assert sorted(map(tuple, unmarked.tolist())) == sorted(map(tuple, pool_rows.tolist()))
    assert not (dm.holdout.x_train == marker).any()  # the stored rows are untouched
    for xb, _ in dm.val_dataloader():
        assert not (xb == marker).any()


def test_builtin_shift_is_per_image_and_seeded():
    img = torch.zeros(50, 1, 5, 5)
    img[:, 0, 2, 2] = 1.0
    torch.manual_seed(0)
    out = RandomShift(1)(img)
    pos = out.reshape(50, -1).argmax(1)
    rows, cols = pos // 5, pos % 5
    assert out.sum() == 50 and rows.sub(2).abs().max() <= 1 and cols.sub(2).abs().max() <= 1
    assert (
        len(set(zip(rows.tolist(), cols.tolist(), strict=True))) > 3
    )  # not one shift for the batch
    x, y = _images()
    a = ImageDataModule(x=x, y=y, transforms="shift", batch_size=8)
    b = ImageDataModule(x=x, y=y, transforms="shift", batch_size=8)
    a.setup()
    b.setup()
    state = torch.get_rng_state()
    first = torch.cat([xb for xb, _ in a.make_train_loader({1: 0})])
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert torch.equal(first, torch.cat([xb for xb, _ in b.make_train_loader({1: 0})]))
    assert not torch.equal(first.sort(0).values, a.holdout.x_train.sort(0).values)


# ---------------------------------------------------------------- classifier
def test_image_classifier_shapes_and_per_sample_loss():
    torch.manual_seed(0)
    binary = ImageClassifier(width=4, depth=2, image_shape=(1, 8, 8), num_classes=2)
    x = torch.rand(5, 64)
    scores = binary(x)
    assert scores.shape == (5, 2) and torch.equal(scores[:, 0], torch.zeros(5))
    y = torch.tensor([0, 1, 1, 0, 1])
    assert torch.allclose(
        binary.per_sample_loss(scores, y), F.cross_entropy(scores, y, reduction="none")
    )
    multi = ImageClassifier(width=4, depth=3, image_shape=(3, 12, 10), num_classes=5)
    assert multi(torch.rand(4, 3 * 12 * 10)).shape == (4, 5)
    assert multi(torch.rand(4, 3, 12, 10)).shape == (4, 5)
    with pytest.raises(VTSSError, match="not built"):
        ImageClassifier()(x)
    with pytest.raises(VTSSError, match="width and depth"):
        ImageClassifier(width=0)


def test_image_classifier_sizes_itself_from_the_datamodule():
    x, y = _images(30, 10, h=8, w=8)
    dm = ImageDataModule(x=x, y=y)
    dm.setup()
    model = ImageClassifier(width=4, class_weight="balanced")
    model.configure_from_data(dm)
    assert model.hparams.image_shape == (1, 8, 8) and model.num_classes == 2
    assert torch.allclose(model.class_weights, torch.tensor([32 / 48, 32 / 16]))


# ------------------------------------------------------------------ search
def test_image_search_end_to_end_writes_report_and_sample_grid(tmp_path, tmp_trainer):
    pl.seed_everything(0)
    dm = ImageDataModule(
        dataset="digits_multiclass",
        classes=[0, 3, 4],
        generator=SMOTEGenerator(k_neighbors=3),
        transforms="shift",
        batch_size=64,
    )
    cb = VTSSCallback(ratios=[0.0, 0.5, 1.0], verbose=False, progress=False)
    trainer = tmp_trainer(max_epochs=2, callbacks=[cb])
    trainer.fit(ImageClassifier(width=4, depth=1), datamodule=dm)
    report = json.loads((tmp_path / "vtss_report.json").read_text())
    ratios = [c["ratio"] for c in report["candidates"]]
    assert ratios == [0.0, 0.5, 1.0] and all(c["status"] == "ok" for c in report["candidates"])
    assert report["diagnostics"]["sample_grid"] == SAMPLES_NAME
    assert (tmp_path / SAMPLES_NAME).stat().st_size > 1000
    assert set(report["test_metrics"]) >= {"balanced_log_loss", "balanced_accuracy"}
    # Per minority class (3 and 4): one real and one synthetic row of 8 images.
    from vtss_lightning.search.sample_grid import image_rows

    rows = image_rows(dm)
    assert [r[0] for r in rows] == ["3", "4"]
    assert all(r[1].shape == (8, 1, 8, 8) and r[2].shape[1:] == (1, 8, 8) for r in rows)


def test_sample_grid_is_skipped_for_tables(tmp_path):
    from vtss_lightning import SyntheticAugmentationDataModule

    x, y = torch.rand(40, 3), torch.tensor([0] * 30 + [1] * 10)
    dm = SyntheticAugmentationDataModule(x, y)
    dm.setup()
    assert write_sample_grid(dm, tmp_path) is None and not (tmp_path / SAMPLES_NAME).exists()


def test_parallel_strategy_falls_back_to_retrain_when_images_are_augmented():
    from vtss_lightning.search.strategies import TrainerSettings
    from vtss_lightning.search.strategies.parallel import ParallelScorer

    x, y = _images(30, 10, h=8, w=8)
    dm = ImageDataModule(x=x, y=y, transforms="shift")
    dm.setup()
    scorer = ParallelScorer(
        ImageClassifier(width=4), TrainerSettings.from_kwargs({"max_epochs": 1}), 0
    )
    assert "transforms" in scorer._blocker(dm)


def test_parallel_image_classifier_with_batch_norm_replays_retrain():
    """Stacked convolutions with batch norm (batch statistics per member, running
    statistics per member for the evaluation) score what one-at-a-time fits score."""
    from vtss_lightning.search.scores import score_jobs
    from vtss_lightning.search.strategies import RetrainScorer, TrainerSettings
    from vtss_lightning.search.strategies.parallel import ParallelScorer

    x, y = _images(60, 15, h=8, w=8)
    dm = ImageDataModule(x=x, y=y, batch_size=16, seed=0)
    dm.setup()
    torch.manual_seed(0)
    model = ImageClassifier(width=4, depth=2, dropout=0.0)
    model.configure_from_data(dm)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    gap = dm.class_gaps()[1]
    dm.prepare_pool({1: gap})
    jobs = [(0, {1: 0}), (1, {1: gap})]
    settings = TrainerSettings.from_kwargs({"max_epochs": 2, "accelerator": "cpu"})
    retrain = [loss for _, loss, _ in score_jobs(RetrainScorer(model, settings, 0), dm, jobs)]
    scorer = ParallelScorer(model, settings, 0)
    parallel = [loss for _, loss, _ in score_jobs(scorer, dm, jobs)]
    assert scorer.fallback_reason is None
    assert parallel == pytest.approx(retrain, abs=1e-3)
    assert retrain[0] != pytest.approx(retrain[1], abs=1e-3)  # the candidates differ


@pytest.mark.parametrize("name", ["image_digits_vae", "image_digits_diffusion"])
def test_digits_configs_run_through_the_cli(tmp_path, name):
    """The shipped configs, with a cheap generator and budget: the newcomer's path."""
    import yaml

    from vtss_lightning.cli import main

    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    assert config["data"]["init_args"]["dataset"] in ("digits_binary", "digits_multiclass")
    assert "ratios" not in config["vtss"]  # the default grid: 0 ... 2, with 1.0
    config["data"]["init_args"]["generator"] = {
        "class_path": "vtss_lightning.generators.SMOTEGenerator"
    }
    config["trainer"].update(max_epochs=1, default_root_dir=str(tmp_path / "run"), logger=False)
    config["vtss"].update(ratios=[0.0, 1.0], progress=False, verbose=False)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    report = json.loads((tmp_path / "run" / "vtss_report.json").read_text())
    assert [c["ratio"] for c in report["candidates"]] == [0.0, 1.0]
    assert (tmp_path / "run" / SAMPLES_NAME).exists() and "test_metrics" in report
