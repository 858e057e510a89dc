"""Images in, flattened pixel rows out: arrays, torchvision-style datasets, built-in digits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vtss_lightning.data.datamodule import SyntheticAugmentationDataModule, reloads_exactly
from vtss_lightning.data.generator_list import GeneratorChoice
from vtss_lightning.data.image_augment import RealRowAugmentedBatches, resolve_transform
from vtss_lightning.data.image_sources import (
    IMAGE_DATASETS,
    dataset_to_tensors,
    load_digit_images,
    select_classes,
    to_image_tensor,
)
from vtss_lightning.data.loaders import TensorBatches
from vtss_lightning.data.preprocessing import ImagePreprocessor
from vtss_lightning.errors import VTSSError

__all__ = ["ImageDataModule", "ImagePreprocessor"]


class ImageDataModule(SyntheticAugmentationDataModule):
    """VTSS data from images: arrays or tensors, a torchvision-style dataset, or a
    built-in digits dataset.

    Every image becomes one row of ``C*H*W`` pixels in ``[0, 1]`` (integer images are
    divided by 255) and the schema records ``(C, H, W)``, so image generators
    (``VAEGenerator``, ``DiffusionGenerator``) and :class:`ImageClassifier` reshape
    rows back to images; SMOTE, jitter and Gaussian generators work on the pixel rows.
    ``transforms`` augments the **real** training images of each batch only, never
    synthetic, validation or test images.

    Parameters
    ----------
    x, y, x_test, y_test
        Images ``(N, C, H, W)`` or ``(N, H, W)`` (uint8 or float in ``[0, 1]``) and
        labels; the test pair is optional and only evaluated.
    dataset
        A built-in name, ``"digits_binary"`` (digit 8 vs the rest, 1:10) or
        ``"digits_multiclass"`` (digits 0-4 with 140/84/50/30/18 images), both from
        scikit-learn's bundled 8x8 digits with a fixed balanced-ish test split
        (:func:`~vtss_lightning.data.image_sources.load_digit_images`); or a
        torchvision-style dataset whose ``ds[i]`` is ``(image, label)`` with PIL or
        tensor images, read once and cached (in YAML: a ``class_path`` such as
        ``torchvision.datasets.MNIST``; it downloads only if you set ``download``).
    test_dataset
        Optional torchvision-style test dataset (same image shape).
    classes
        Keep only these labels (development and test data).
    max_per_class
        Subsample development images of the named classes to at most this many
        (seeded by ``data_seed``): how a balanced dataset like MNIST is made imbalanced.
    transforms
        Augmentation of real training images: a callable on ``(n, C, H, W)`` batches
        (e.g. a torchvision ``v2`` transform; it draws one set of parameters per
        batch) or ``"shift"`` (per-image random shift by 1 pixel), ``"flip"``,
        ``"shift_flip"``.
    data_seed
        Seeds ``max_per_class`` subsampling; the run's ``seed`` never changes which
        images form the data.
    generator, val_fraction, batch_size, synthetic_ratio, seed
        See :class:`SyntheticAugmentationDataModule`.
    """

    def __init__(
        self,
        x: Any = None,
        y: Any = None,
        x_test: Any = None,
        y_test: Any = None,
        dataset: str | Dataset | None = None,
        test_dataset: Dataset | None = None,
        classes: list[int | str] | None = None,
        max_per_class: dict[str, int] | None = None,
        transforms: str | Callable | None = None,
        data_seed: int = 0,
        generator: GeneratorChoice = None,
        val_fraction: float = 0.2,
        batch_size: int = 256,
        synthetic_ratio: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            generator=generator,
            val_fraction=val_fraction,
            batch_size=batch_size,
            synthetic_ratio=synthetic_ratio,
            seed=seed,
        )
        if (x is None) == (dataset is None):
            raise VTSSError(
                "give exactly one of x=/y= (image arrays) or dataset= (a built-in name or "
                "a torchvision-style dataset)"
            )
        if x is not None and y is None:
            raise VTSSError("y= is required with x=: give one label per image")
        if (x_test is None) != (y_test is None):
            raise VTSSError("give both x_test= and y_test=, or neither")
        if isinstance(dataset, str) and dataset not in IMAGE_DATASETS:
            raise VTSSError(
                f"unknown image dataset {dataset!r}; built-in image datasets are "
                f"{', '.join(IMAGE_DATASETS)} (or pass a torchvision-style dataset)"
            )
        if isinstance(dataset, str) and (test_dataset is not None or x_test is not None):
            raise VTSSError(f"the built-in {dataset!r} has its own test split; drop the test data")
        if max_per_class is not None and not isinstance(max_per_class, Mapping):
            raise VTSSError("max_per_class must map class labels to counts, e.g. {'3': 100}")
        self.images = (x, y, x_test, y_test)
        self.dataset, self.test_dataset = dataset, test_dataset
        self.classes, self.max_per_class, self.data_seed = classes, max_per_class, data_seed
        self.transforms = transforms
        self.transform = resolve_transform(transforms)
        self.description: str | None = None
        self._loaded: tuple | None = None

    # ------------------------------------------------------------------ loading
    @reloads_exactly
    def load_data(self) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None, np.ndarray | None]:
        if self._loaded is None:
            self._loaded = self._read()
        return self._loaded

    def forget_source(self) -> None:
        """Drop the images read (a built-in set or a dataset's items, read again for a
        fold or the refit on all rows: the encoded rows are a copy of them); arrays
        given as ``x=`` are the caller's and stay."""
        self._loaded = None

    def _read(self):
        x, y, x_test, y_test = self.images
        if isinstance(self.dataset, str):
            x, y, x_test, y_test, self.description = load_digit_images(self.dataset)
        elif self.dataset is not None:
            x, y = dataset_to_tensors(self.dataset, "dataset")
            if self.test_dataset is not None:
                x_test, y_test = dataset_to_tensors(self.test_dataset, "test_dataset")
        else:
            x, y = to_image_tensor(x, "images"), _labels(y)
            if x_test is not None:
                x_test, y_test = to_image_tensor(x_test, "test images"), _labels(y_test)
        if len(x) != len(y):
            raise VTSSError(f"{len(x)} images but {len(y)} labels")
        x, y = select_classes(x, y, self.classes, self.max_per_class, self.data_seed)
        if x_test is not None:
            if len(x_test) != len(y_test):
                raise VTSSError(f"{len(x_test)} test images but {len(y_test)} test labels")
            x_test, y_test = select_classes(x_test, y_test, self.classes, None, 0, "test data")
        return x, y, x_test, y_test

    def make_preprocessor(self, x_train: torch.Tensor) -> ImagePreprocessor:
        return ImagePreprocessor().fit(x_train)

    def setup(self, stage: str | None = None) -> None:
        if self._is_setup:
            return
        super().setup(stage)
        if self.description:
            self.notes.append(self.description)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image row."""
        return self.schema.image_shape

    # ---------------------------------------------------------------- loaders
    def make_train_loader(
        self, sizes: Mapping[int, int] | None = None, full_batch: bool = False
    ) -> TensorBatches:
        """ERM batches over real + synthetic rows; ``transforms`` touch the real rows only."""
        if self.transform is None:
            return super().make_train_loader(sizes, full_batch)
        n_real = len(self._require_setup().x_train)
        x, y = self.training_tensors(sizes)  # real rows first, then the pool prefix
        return RealRowAugmentedBatches(
            x,
            y,
            None if full_batch else self.batch_size,
            shuffle=True,
            seed=self.seed,
            n_real=n_real,
            transform=self.transform,
            image_shape=self.image_shape,
        )


def _labels(y: Any) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        return y.detach().cpu().numpy()
    return np.asarray(y)
