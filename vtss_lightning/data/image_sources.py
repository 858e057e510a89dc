"""Where images come from: arrays, torchvision-style datasets, built-in digits.

Everything here returns ``float32`` tensors of shape ``(N, C, H, W)`` with pixels in
``[0, 1]`` and a label array; :class:`~vtss_lightning.data.image.ImageDataModule`
flattens them into rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from vtss_lightning.errors import VTSSError

#: Built-in image datasets (scikit-learn's bundled 8x8 digits; no download).
IMAGE_DATASETS: tuple[str, ...] = ("digits_binary", "digits_multiclass")

#: ``digits_binary``: this digit is the minority class, all other digits the majority.
DIGITS_BINARY_MINORITY = 8
#: ``digits_binary``: majority rows per minority row in the development data.
DIGITS_BINARY_RATIO = 10
#: ``digits_binary`` test rows: this many of the minority digit, and per other digit.
DIGITS_BINARY_TEST = (20, 10)
#: ``digits_multiclass``: digits 0-4 with geometric development sizes (ratio 0.6).
DIGITS_MULTICLASS_SIZES = {0: 140, 1: 84, 2: 50, 3: 30, 4: 18}
#: ``digits_multiclass`` test rows per digit (balanced).
DIGITS_MULTICLASS_TEST = 30
#: The images chosen never depend on the run's seed: the dataset is a fixed benchmark.
DIGITS_SEED = 0


def to_image_tensor(x: Any, what: str = "images") -> torch.Tensor:
    """Arrays or tensors ``(N, C, H, W)`` / ``(N, H, W)`` as float32 in ``[0, 1]``.

    Integer images (e.g. ``uint8``) are divided by 255; float images must already
    lie in ``[0, 1]``.
    """
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if t.ndim != 4:
        raise VTSSError(f"{what} must have shape (N, C, H, W) or (N, H, W), got {tuple(t.shape)}")
    if t.dtype == torch.bool:
        t = t.to(torch.float32)
    elif not t.is_floating_point():
        if t.numel() and (t.min() < 0 or t.max() > 255):
            raise VTSSError(f"integer {what} must hold pixel values 0-255")
        t = t.to(torch.float32) / 255.0
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise VTSSError(f"{what} contain NaN or ±inf values")
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise VTSSError(
            f"float {what} must have pixel values in [0, 1] (got {float(t.min()):g} to "
            f"{float(t.max()):g}); divide by the maximum pixel value or pass uint8 images"
        )
    return t.contiguous()


def dataset_to_tensors(dataset: Any, what: str = "dataset") -> tuple[torch.Tensor, np.ndarray]:
    """Read a torchvision-style dataset once into ``(images, labels)``.

    ``dataset[i]`` must return ``(image, label)`` with a PIL image, an array or a
    tensor ``(C, H, W)``/``(H, W)``. torchvision datasets that keep raw ``data`` and
    ``targets`` (MNIST, CIFAR) and have no ``transform`` are read in one step.
    """
    if _has_raw_arrays(dataset):
        return to_image_tensor(_channels_first(dataset.data), what), np.asarray(dataset.targets)
    try:
        n = len(dataset)
    except TypeError as exc:
        raise VTSSError(
            f"{what} must be indexable with a length, like a torchvision dataset"
        ) from exc
    if n == 0:
        raise VTSSError(f"{what} is empty")
    images, labels = [], []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, Sequence | tuple) or len(item) != 2:
            raise VTSSError(f"{what}[{i}] must be an (image, label) pair")
        images.append(_one_image(item[0], what))
        labels.append(_label(item[1]))
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise VTSSError(f"{what} has images of different shapes {sorted(shapes)[:3]}; resize them")
    return to_image_tensor(torch.stack(images), what), np.asarray(labels)


def _has_raw_arrays(dataset: Any) -> bool:
    data = getattr(dataset, "data", None)
    return (
        isinstance(data, torch.Tensor | np.ndarray)
        and hasattr(dataset, "targets")
        and getattr(dataset, "transform", None) is None
        and getattr(dataset, "transforms", None) is None
        and len(data) == len(dataset.targets)
        and data.ndim in (3, 4)
    )


def _channels_first(data: Any) -> Any:
    # CIFAR keeps (N, H, W, C) uint8 arrays; MNIST keeps (N, H, W).
    if data.ndim == 4 and data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):
        return np.asarray(data).transpose(0, 3, 1, 2)
    return data


def _one_image(img: Any, what: str) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
    elif hasattr(img, "getbands"):  # a PIL image
        from torchvision.transforms.functional import pil_to_tensor

        t = pil_to_tensor(img)
    else:
        t = torch.as_tensor(np.asarray(img))
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise VTSSError(f"{what} images must be (C, H, W) or (H, W), got {tuple(t.shape)}")
    return t


def _label(y: Any) -> Any:
    if isinstance(y, torch.Tensor):
        return y.item()
    return y


def select_classes(
    x: torch.Tensor,
    y: np.ndarray,
    classes: Sequence | None,
    max_per_class: Mapping[Any, int] | None,
    seed: int,
    what: str = "data",
) -> tuple[torch.Tensor, np.ndarray]:
    """Keep the listed classes and subsample some to a fixed count (seeded, sorted).

    Class keys compare as text, so YAML's ``{"3": 100}`` matches integer label 3.
    This is how a balanced dataset such as MNIST is made imbalanced reproducibly.
    """
    keep = np.ones(len(y), dtype=bool)
    keys = np.asarray([str(v) for v in y])
    if classes is not None:
        wanted = {str(c) for c in classes}
        missing = wanted - set(keys.tolist())
        if missing:
            raise VTSSError(f"classes {sorted(missing)} do not occur in the {what}")
        keep &= np.isin(keys, list(wanted))
    if max_per_class:
        rng = np.random.default_rng(seed)
        for label, cap in sorted((str(k), int(v)) for k, v in max_per_class.items()):
            if cap < 1:
                raise VTSSError(f"max_per_class for class {label} must be >= 1, got {cap}")
            rows = np.flatnonzero(keep & (keys == label))
            if len(rows) == 0:
                raise VTSSError(f"max_per_class names class {label}, which is not in the {what}")
            if len(rows) > cap:
                drop = np.setdiff1d(rows, rng.choice(rows, cap, replace=False))
                keep[drop] = False
    idx = np.flatnonzero(keep)
    return x[torch.as_tensor(idx, dtype=torch.long)], y[idx]


def load_digit_images(
    name: str, seed: int = DIGITS_SEED
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray, str]:
    """A built-in imbalanced digits dataset: dev images/labels, test images/labels, text.

    ``digits_binary``: digit 8 (label 1) against the other nine (label 0);
    the test split holds 20 eights and 10 of each other digit, the development data
    every remaining other digit (1533) and 153 eights (1:10). ``digits_multiclass``:
    digits 0-4 (labels 0-4) with 140, 84, 50, 30 and 18 development images and 30
    test images each. Pixels are scikit-learn's 0-16 values divided by 16.
    """
    from sklearn.datasets import load_digits

    if name not in IMAGE_DATASETS:
        raise VTSSError(
            f"unknown image dataset {name!r}; built-in image datasets are {', '.join(IMAGE_DATASETS)}"
        )
    bunch = load_digits()
    images = torch.as_tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    digits = np.asarray(bunch.target)
    rng = np.random.default_rng(seed)
    if name == "digits_binary":
        test_counts = {
            d: DIGITS_BINARY_TEST[0] if d == DIGITS_BINARY_MINORITY else DIGITS_BINARY_TEST[1]
            for d in range(10)
        }
        test_idx, rest = _hold_out(digits, test_counts, rng)
        others = rest[digits[rest] != DIGITS_BINARY_MINORITY]
        eights = rest[digits[rest] == DIGITS_BINARY_MINORITY]
        n_min = len(others) // DIGITS_BINARY_RATIO
        dev_idx = np.sort(np.concatenate([others, rng.choice(eights, n_min, replace=False)]))
        label = (digits == DIGITS_BINARY_MINORITY).astype(np.int64)  # 1 = eight: the positive class
        text = (
            f"scikit-learn digits (8x8): eight = 1 ({n_min}) vs the other nine = 0 ({len(others)}), "
            "1:10; test 20 eights + 10 of each other digit"
        )
    else:
        test_counts = dict.fromkeys(DIGITS_MULTICLASS_SIZES, DIGITS_MULTICLASS_TEST)
        test_idx, rest = _hold_out(digits, test_counts, rng)
        chosen = [
            rng.choice(rest[digits[rest] == d], n, replace=False)
            for d, n in DIGITS_MULTICLASS_SIZES.items()
        ]
        dev_idx = np.sort(np.concatenate(chosen))
        label = digits
        sizes = ", ".join(str(n) for n in DIGITS_MULTICLASS_SIZES.values())
        text = f"scikit-learn digits (8x8) 0-4 with {sizes} images; test 30 per digit"
    idx_t = torch.as_tensor(test_idx, dtype=torch.long)
    idx_d = torch.as_tensor(dev_idx, dtype=torch.long)
    return images[idx_d], label[dev_idx], images[idx_t], label[test_idx], text


def _hold_out(
    digits: np.ndarray, counts: Mapping[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded test rows per digit (``counts``) and the remaining rows of those digits."""
    test = [rng.choice(np.flatnonzero(digits == d), n, replace=False) for d, n in counts.items()]
    test_idx = np.sort(np.concatenate(test))
    pool = np.flatnonzero(np.isin(digits, list(counts)))
    return test_idx, np.setdiff1d(pool, test_idx)
