"""Augmentation of real training images only, batch by batch, seeded.

Synthetic rows are already the generator's variation of the class; augmenting them
too would change what a candidate size means. Validation and test rows are never
augmented. Transforms see image batches ``(n, C, H, W)`` with pixels in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from vtss_lightning._random import AUGMENT_BATCH_SALT, AUGMENT_PASS_SALT, derive_seed
from vtss_lightning.data.loaders import TensorBatches
from vtss_lightning.errors import VTSSError

ImageTransform = Callable[[torch.Tensor], torch.Tensor]


class RandomShift:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with zeros.

    One offset per image (torchvision's v2 ops on a batch draw one set of parameters
    for the whole batch), drawn from the global CPU RNG that the loader seeds.
    """

    def __init__(self, max_shift: int = 1) -> None:
        if max_shift < 0:
            raise VTSSError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = int(max_shift)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        s = self.max_shift
        if s == 0 or len(images) == 0:
            return images
        n, c, h, w = images.shape
        dev = images.device
        padded = torch.nn.functional.pad(images, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (n, 1)).to(dev)
        dx = torch.randint(0, 2 * s + 1, (n, 1)).to(dev)
        rows = (dy + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx + torch.arange(w, device=dev))[:, None, None, :]
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(c, device=dev)[None, :, None, None]
        return padded[batch, chan, rows, cols]

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift})"


class RandomFlip:
    """Mirror each image left-right with probability ``p`` (not for digits or text)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise VTSSError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        flip = (torch.rand(len(images)) < self.p).to(images.device)
        return torch.where(flip[:, None, None, None], images.flip(-1), images)

    def __repr__(self) -> str:
        return f"RandomFlip(p={self.p})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, *transforms: ImageTransform) -> None:
        self.transforms = transforms

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            images = t(images)
        return images

    def __repr__(self) -> str:
        return f"Compose{self.transforms!r}"


#: Names accepted by ``ImageDataModule(transforms=...)`` (handy in YAML).
BUILTIN_TRANSFORMS: dict[str, Callable[[], ImageTransform]] = {
    "shift": lambda: RandomShift(1),
    "flip": lambda: RandomFlip(0.5),
    "shift_flip": lambda: Compose(RandomShift(1), RandomFlip(0.5)),
}


def resolve_transform(transforms: str | ImageTransform | None) -> ImageTransform | None:
    """A built-in transform by name, a callable as is, or ``None``."""
    if transforms is None or callable(transforms):
        return transforms
    if isinstance(transforms, str) and transforms in BUILTIN_TRANSFORMS:
        return BUILTIN_TRANSFORMS[transforms]()
    raise VTSSError(
        f"transforms must be a callable on (n, C, H, W) batches or one of "
        f"{', '.join(BUILTIN_TRANSFORMS)}; got {transforms!r}"
    )


class RealRowAugmentedBatches(TensorBatches):
    """:class:`TensorBatches` that transform the real rows of each batch, not the rest.

    The first ``n_real`` rows of ``x`` are real (the DataModule puts the synthetic
    pool prefix after them); a mask follows them through the shuffle. Each batch's
    transform runs under a CPU RNG seeded from ``(seed, pass, batch)``, so augmented
    runs repeat exactly and do not disturb the global RNG.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int | None,
        shuffle: bool,
        seed: int,
        n_real: int,
        transform: ImageTransform,
        image_shape: tuple[int, int, int],
    ) -> None:
        super().__init__(x, y, batch_size, shuffle, seed)
        if not 0 <= n_real <= len(y):
            raise VTSSError(f"n_real must be between 0 and {len(y)}, got {n_real}")
        self.n_real, self.transform, self.image_shape = n_real, transform, tuple(image_shape)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, this_pass = len(self.y), self._passes
        real = torch.arange(n, device=self.x.device) < self.n_real
        order = self.next_order()
        x, y = self.x, self.y
        if order is not None:
            x, y, real = x[order], y[order], real[order]
        for b, start in enumerate(range(0, n, self.batch_size)):
            stop = start + self.batch_size
            batch = derive_seed(this_pass, AUGMENT_BATCH_SALT, b)
            seed = derive_seed(self.seed, AUGMENT_PASS_SALT, batch) % (2**63)
            yield self._augment(x[start:stop], real[start:stop], seed), y[start:stop]

    def _augment(self, xb: torch.Tensor, real: torch.Tensor, seed: int) -> torch.Tensor:
        idx = torch.nonzero(real).flatten()
        if len(idx) == 0:
            return xb
        images = xb[idx].reshape(len(idx), *self.image_shape)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            out = self.transform(images)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(images.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise VTSSError(
                f"the image transform must return a tensor of shape {tuple(images.shape)}, got {got}"
            )
        xb = xb.clone()
        xb[idx] = out.reshape(len(idx), -1).to(xb.dtype)
        return xb
