"""A small CNN for flattened image rows, sized from the DataModule's image shape."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vtss_lightning.errors import VTSSError
from vtss_lightning.models.base import BalancedClassifier, check_class_weight


class ImageClassifier(BalancedClassifier):
    """``depth`` conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool while the image
    is at least 2 pixels), global average pooling, dropout, a linear head; AdamW.

    Rows arrive flattened (the VTSS contract) and are reshaped to ``image_shape``,
    read from the DataModule's schema in ``configure_model`` together with the class
    count, so configs never state them. The conventions are
    :class:`~vtss_lightning.models.TabularClassifier`'s: binary tasks use one logit
    (class 0 fixed at 0), ``per_sample_loss`` is the cross-entropy of each row (its
    balanced mean is the selection criterion), ``class_weight`` is the cost-sensitive
    baseline.

    Parameters
    ----------
    width
        Channels of the first block; block ``i`` has ``width * 2**i``.
    depth
        Number of conv blocks.
    dropout
        Dropout before the linear head.
    lr, weight_decay
        AdamW settings (no decay on biases and norm parameters).
    class_weight
        ``"balanced"`` (``n / (C * n_k)`` on the real training rows), a number ``w``
        for the minority class of a binary task (fewer training rows), or ``None``.
    image_shape, num_classes
        Only needed without a VTSS image DataModule.
    """

    full_batch = False

    def __init__(
        self,
        width: int = 32,
        depth: int = 2,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        class_weight: float | Literal["balanced"] | None = None,
        image_shape: tuple[int, int, int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise VTSSError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        if lr <= 0 or weight_decay < 0 or not 0 <= dropout < 1:
            raise VTSSError("lr must be > 0, weight_decay >= 0 and dropout in [0, 1)")
        check_class_weight(class_weight)
        self.save_hyperparameters()
        self.net: nn.Module | None = None
        if image_shape is not None and num_classes is not None:
            self.build(tuple(image_shape), num_classes)

    # ---------------------------------------------------------------- building
    def build(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        class_counts: list[int] | None = None,
    ) -> None:
        """Create the layers and metrics for ``image_shape`` inputs and ``num_classes``."""
        if num_classes < 2:
            raise VTSSError(f"num_classes must be >= 2, got {num_classes}")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise VTSSError(f"image_shape must be (C, H, W), got {image_shape}")
        hp = self.hparams
        hp.image_shape, hp.num_classes = tuple(int(s) for s in image_shape), int(num_classes)
        self.init_targets(num_classes, class_counts)
        c, h, w = hp.image_shape
        layers: list[nn.Module] = []
        for i in range(hp.depth):
            out = hp.width * 2**i
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(hp.dropout)]
        layers.append(nn.Linear(c, 1 if num_classes == 2 else num_classes))
        self.net = nn.Sequential(*layers)

    def configure_from_data(self, datamodule) -> None:
        """Size the network from a set-up VTSS image DataModule (idempotent)."""
        if self.net is not None:
            return
        shape = getattr(datamodule.schema, "image_shape", None)
        if shape is None:
            raise VTSSError(
                "ImageClassifier needs image rows: use ImageDataModule (or pass image_shape=)"
            )
        counts = datamodule.holdout.class_counts if hasattr(datamodule, "holdout") else None
        self.build(shape, datamodule.num_classes, counts)

    def configure_model(self) -> None:
        if self.net is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "schema"):
            raise VTSSError(
                "ImageClassifier needs image_shape and num_classes, or a VTSS ImageDataModule"
            )
        self.configure_from_data(dm)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for flattened rows ``(N, C*H*W)`` or images."""
        if self.net is None:
            raise VTSSError(
                "the model is not built yet; fit it with a VTSS DataModule or call build()"
            )
        z = self.net(x.reshape(len(x), *self.hparams.image_shape))
        if self.num_classes == 2:
            return torch.cat([torch.zeros_like(z), z], dim=1)
        return z

    def per_sample_loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each row; its balanced mean is the selection criterion."""
        return F.cross_entropy(scores, y, reduction="none")

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for p in self.parameters() if p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.ndim <= 1]
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=hp.lr,
        )
