"""What every classifier of the package shares: class weights, loss, the Lightning steps."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy

from vtss_lightning import _lightning
from vtss_lightning.errors import VTSSError
from vtss_lightning.metrics import BalancedMeanLoss


def check_class_weight(class_weight: float | str | None) -> None:
    """Refuse anything but ``None``, ``"balanced"`` or a number > 0."""
    if isinstance(class_weight, str) and class_weight != "balanced":
        raise VTSSError(
            f"class_weight must be None, 'balanced' or a number > 0, got {class_weight!r}"
        )
    if isinstance(class_weight, int | float) and not class_weight > 0:
        raise VTSSError(f"class_weight must be > 0, got {class_weight}")


def class_weight_vector(
    class_weight: float | str | None, num_classes: int, counts: list[int] | None
) -> torch.Tensor:
    """Per-class loss weights for ``class_weight`` (``None``, ``"balanced"`` or ``w``).

    ``"balanced"`` weighs class ``k`` by ``n / (C * n_k)`` on the real training rows;
    a number ``w`` weighs the minority of a binary task, the class with fewer real
    training rows (labels are sorted, so it can be index 0), or class index 1 when
    the model is built without counts.
    """
    weights = torch.ones(num_classes)
    if class_weight == "balanced":
        if counts is None:
            raise VTSSError(
                'class_weight="balanced" needs the class counts; build from a VTSS DataModule'
            )
        n = torch.as_tensor(counts, dtype=torch.float32)
        weights = n.sum() / (num_classes * n.clamp_min(1))
    elif class_weight is not None:
        if num_classes != 2:
            raise VTSSError(
                "a numeric class_weight is for binary tasks; use 'balanced' for multi-class"
            )
        minority = 1 if counts is None else int(counts[1] <= counts[0])
        weights[minority] = float(class_weight)
    return weights


class BalancedClassifier(_lightning.dual_base("LightningModule")):
    """Plain (optionally class-weighted) ERM with the balanced validation metrics.

    Subclasses build ``self.net``, call :meth:`init_targets` once the class count is
    known, and define ``forward`` (scores ``(N, num_classes)``) and
    :meth:`per_sample_loss`, whose balanced mean is VTSS's selection criterion.
    """

    def init_targets(self, num_classes: int, class_counts: list[int] | None) -> None:
        """Class weights and validation metrics for ``num_classes`` classes."""
        self.num_classes = num_classes
        weights = class_weight_vector(self.hparams.class_weight, num_classes, class_counts)
        self.register_buffer("class_weights", weights)
        self.val_balanced_loss = BalancedMeanLoss(num_classes)
        self.val_balanced_accuracy = MulticlassAccuracy(num_classes, average="macro")
        self.test_balanced_loss = BalancedMeanLoss(num_classes)
        self.test_balanced_accuracy = MulticlassAccuracy(num_classes, average="macro")

    def per_sample_loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training loss: the (class-weighted) mean of :meth:`per_sample_loss`."""
        per_row = self.per_sample_loss(scores, y)
        if self.hparams.class_weight is None:
            return per_row.mean()
        w = self.class_weights[y]
        return (w * per_row).sum() / w.sum()

    def penalty(self, n_rows: int = 0) -> torch.Tensor | float:
        """Extra term added to the training loss of a batch of ``n_rows`` rows (e.g. an
        explicit L2 penalty scaled by the data size)."""
        return 0.0

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self(x), y) + self.penalty(len(y))
        if self.trainer.loggers or self.trainer.progress_bar_callback is not None:
            # Skipped in VTSS's inner fits (no logger, no bar): logging dominates tiny steps.
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        """``trainer.test``: the same balanced loss and accuracy on the test rows."""
        self._evaluate(batch, "test")

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch
        scores = self(x)
        loss = getattr(self, f"{stage}_balanced_loss")
        accuracy = getattr(self, f"{stage}_balanced_accuracy")
        loss.update(self.per_sample_loss(scores, y), y)
        accuracy.update(scores.argmax(1), y)
        self.log(f"{stage}_balanced_loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}_balanced_accuracy", accuracy)
