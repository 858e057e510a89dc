"""Balanced cross-entropy: the objective VTSS minimises on validation data.

The balanced log loss is the mean over classes of each class's mean cross-entropy.
Unlike the plain mean it does not let the majority class dominate, which is why it
is the paper's target risk. The math lives once, in :func:`per_class_loss_sums`;
the differentiable function and the streaming torchmetrics ``Metric`` both use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryAveragePrecision,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassAveragePrecision,
)

from vtss_lightning.errors import VTSSError

__all__ = [
    "BalancedCrossEntropy",
    "BalancedMeanLoss",
    "class_sums",
    "balanced_cross_entropy",
    "classification_metrics",
    "logit_adjusted_balanced_log_loss",
    "per_class_loss_sums",
]


def _check_num_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise VTSSError(f"num_classes must be an integer >= 2, got {num_classes!r}.")


def _check_target(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Return ``target`` as a 1-D long tensor after checking it against ``preds``."""
    if target.ndim == 2 and target.shape[1] == 1:
        target = target.reshape(-1)
    if target.ndim != 1:
        raise VTSSError(
            f"target must be a 1-D tensor of class indices, got shape {tuple(target.shape)}."
        )
    if target.shape[0] != preds.shape[0]:
        raise VTSSError(
            f"preds and target disagree on the number of rows: {preds.shape[0]} vs "
            f"{target.shape[0]}."
        )
    if target.is_floating_point():
        if not torch.equal(target, target.round()):
            raise VTSSError("target must hold integer class indices, got fractional values.")
    elif target.dtype.is_complex:
        raise VTSSError(f"target must hold integer class indices, got dtype {target.dtype}.")
    target = target.long()
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise VTSSError(
            f"target values must lie in [0, {num_classes - 1}], got range "
            f"[{int(target.min())}, {int(target.max())}]."
        )
    return target


def _per_sample_loss(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Cross-entropy of every row; accepts (N, C) logits or binary (N,)/(N, 1) logits."""
    if not preds.is_floating_point():
        raise VTSSError(f"preds must be floating-point logits, got dtype {preds.dtype}.")
    single_logit = preds.ndim == 1 or (preds.ndim == 2 and preds.shape[1] == 1)
    if single_logit:
        if num_classes != 2:
            raise VTSSError(
                f"A single logit per row (shape {tuple(preds.shape)}) needs num_classes=2, "
                f"got num_classes={num_classes}; pass (N, {num_classes}) logits instead."
            )
        logit = preds.reshape(-1)
        target = _check_target(logit, target, num_classes)
        return F.binary_cross_entropy_with_logits(logit, target.to(logit.dtype), reduction="none")
    if preds.ndim != 2 or preds.shape[1] != num_classes:
        raise VTSSError(
            f"preds must be logits of shape (N, {num_classes}), got shape {tuple(preds.shape)}."
        )
    target = _check_target(preds, target, num_classes)
    return -F.log_softmax(preds, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)


def per_class_loss_sums(preds: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Sum of cross-entropy and number of rows, per true class.

    Parameters
    ----------
    preds
        Logits, shape (N, C); for ``num_classes == 2`` also (N,) or (N, 1), read as
        the logit of class 1.
    target
        Class indices, shape (N,).
    num_classes
        C, the number of classes.

    Returns
    -------
    sums : Tensor, shape (C,)
        Per-class loss sums, differentiable with respect to ``preds``.
    counts : Tensor, shape (C,)
        Per-class row counts, same floating dtype as ``sums``.
    """
    _check_num_classes(num_classes)
    return class_sums(_per_sample_loss(preds, target, num_classes), target, num_classes)


def class_sums(loss: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class sums and counts of any per-row loss (shape (N,)) by true class."""
    target = target.reshape(-1).long()
    sums = torch.zeros(num_classes, dtype=loss.dtype, device=loss.device).index_add(0, target, loss)
    counts = torch.bincount(target, minlength=num_classes).to(loss.dtype)
    return sums, counts


def _balanced_mean(sums: Tensor, counts: Tensor) -> Tensor:
    present = counts > 0
    if not bool(present.any()):
        return torch.tensor(float("nan"), dtype=sums.dtype, device=sums.device)
    return (sums[present] / counts[present]).mean()


def balanced_cross_entropy(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Balanced log loss of a batch: mean over present classes of the per-class mean CE.

    Differentiable, so it can also serve as a training loss. Classes with no rows in
    ``target`` are left out; with no rows at all the result is nan.

    Parameters
    ----------
    preds, target, num_classes
        As in :func:`per_class_loss_sums`.

    Returns
    -------
    Tensor
        A scalar.
    """
    return _balanced_mean(*per_class_loss_sums(preds, target, num_classes))


class BalancedMeanLoss(Metric):
    """Streaming balanced mean of any per-row loss: mean over classes of class means.

    Keeps a loss sum and a row count per class, so accumulating over batches (and
    over processes, by summing states) gives exactly the full-data value, which a
    mean of per-batch balanced losses would not. ``update(losses, target)`` takes
    per-row losses; :class:`BalancedCrossEntropy` computes them from logits.

    Parameters
    ----------
    num_classes
        Number of classes, at least 2.
    **kwargs
        Passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    loss_sum: Tensor
    count: Tensor

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.add_state("loss_sum", default=torch.zeros(num_classes), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes), dist_reduce_fx="sum")

    def update(self, losses: Tensor, target: Tensor) -> None:
        """Add a batch of per-row losses (N,) and their class indices (N,)."""
        self._accumulate(*class_sums(losses.reshape(-1), target, self.num_classes))

    def _accumulate(self, sums: Tensor, counts: Tensor) -> None:
        self.loss_sum = self.loss_sum + sums.to(self.loss_sum.dtype)
        self.count = self.count + counts.to(self.count.dtype)

    def compute(self) -> Tensor:
        """Mean over classes seen so far of their mean loss; nan if nothing was seen."""
        return _balanced_mean(self.loss_sum, self.count)

    def per_class(self) -> Tensor:
        """Mean loss of each class, shape (C,); nan for classes with no rows."""
        return torch.where(
            self.count > 0,
            self.loss_sum / self.count.clamp_min(1),
            torch.full_like(self.loss_sum, float("nan")),
        )


class BalancedCrossEntropy(BalancedMeanLoss):
    """Streaming balanced log loss (the VTSS selection criterion) from logits.

    Parameters
    ----------
    num_classes
        Number of classes, at least 2.
    **kwargs
        Passed to :class:`torchmetrics.Metric`.
    """

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of logits and class indices (shapes as in `per_class_loss_sums`)."""
        self._accumulate(*per_class_loss_sums(preds, target, self.num_classes))


def _two_column_logits(logits: Tensor, num_classes: int) -> Tensor:
    """Turn binary single-logit output into (N, 2) logits; leave (N, C) as is."""
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        if num_classes != 2:
            raise VTSSError(
                f"A single logit per row needs num_classes=2, got num_classes={num_classes}."
            )
        z = logits.reshape(-1, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)
    return logits


def logit_adjusted_balanced_log_loss(
    logits: Tensor, target: Tensor, num_classes: int, priors: Tensor | list[float]
) -> Tensor:
    """Balanced log loss after post-hoc logit adjustment (Menon et al., ICLR 2021).

    Subtracts ``log priors`` from the logits, then takes the balanced log loss (mean
    over present classes of the per-class mean cross-entropy). A model trained on
    imbalanced rows learns ``p(y | x)`` under the training priors; removing the log
    prior shifts it to uniform priors, the ones the balanced loss implicitly scores
    under. It needs no retraining and no synthetic rows, which makes it the strongest
    cheap non-synthetic remedy to compare VTSS against on balanced log loss. With
    uniform priors it equals :func:`balanced_cross_entropy`.

    Parameters
    ----------
    logits, target, num_classes
        As in :func:`per_class_loss_sums`; a binary single logit (N,)/(N, 1) is the
        logit of class 1 and is adjusted by ``log priors[0] - log priors[1]``.
    priors
        Per-class training shares, shape (C,), all positive (counts work too: only
        their ratios matter).

    Returns
    -------
    Tensor
        A differentiable scalar.
    """
    _check_num_classes(num_classes)
    log_prior = _log_priors(priors, num_classes, logits)
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
        # keep the single-logit form (and its shape checks) in per_class_loss_sums
        adjusted = logits - (log_prior[1] - log_prior[0])
    else:
        adjusted = logits - log_prior
    return balanced_cross_entropy(adjusted, target, num_classes)


def _log_priors(priors: Tensor | list[float], num_classes: int, like: Tensor) -> Tensor:
    if not like.is_floating_point():
        raise VTSSError(f"logits must be floating-point, got dtype {like.dtype}.")
    p = torch.as_tensor(priors, dtype=like.dtype, device=like.device).reshape(-1)
    if p.numel() != num_classes:
        raise VTSSError(f"priors must have {num_classes} entries, got {p.numel()}.")
    if not bool(torch.isfinite(p).all()) or bool((p <= 0).any()):
        raise VTSSError(f"priors must be finite and positive, got {p.tolist()}.")
    return (p / p.sum()).log()


def classification_metrics(
    logits: Tensor, target: Tensor, num_classes: int, positive: int | None = None
) -> dict[str, float]:
    """Test-set summary: balanced log loss, balanced/plain accuracy and ranking metrics.

    Parameters
    ----------
    logits
        Shape (N, C), or (N,)/(N, 1) for binary.
    target
        Class indices, shape (N,).
    num_classes
        C.
    positive
        Binary only: the class index binary AUPRC/AUROC treat as positive. Callers
        should pass the minority class (by training counts); ``None`` keeps the old
        default, index 1. Ignored for multi-class (macro averages have no positive).

    Returns
    -------
    dict
        ``balanced_log_loss``, ``balanced_accuracy``, ``accuracy`` and, for binary,
        ``auprc`` and ``auroc`` of class ``positive``; for multi-class, ``macro_auroc``
        and ``macro_auprc`` (one-vs-rest, mean over classes). Plain floats; ranking
        metrics are nan when fewer than two classes are present in ``target``.
    """
    _check_num_classes(num_classes)
    positive = _check_positive(positive, num_classes)
    # float64 on CPU: a report number should not carry float32 rounding of tiny losses.
    logits = logits.detach().cpu().to(torch.float64)
    target = target.detach().cpu()
    out: dict[str, float] = {
        "balanced_log_loss": float(balanced_cross_entropy(logits, target, num_classes))
    }
    logits = _two_column_logits(logits, num_classes)
    target = _check_target(logits, target, num_classes)
    prob = logits.softmax(dim=1)
    pred = prob.argmax(dim=1)
    macro = MulticlassAccuracy(num_classes=num_classes, average="macro")
    micro = MulticlassAccuracy(num_classes=num_classes, average="micro")
    out["balanced_accuracy"] = float(macro(pred, target))
    out["accuracy"] = float(micro(pred, target))
    out.update(_ranking_metrics(prob, target, num_classes, positive))
    return out


def _check_positive(positive: int | None, num_classes: int) -> int:
    if positive is None:
        return 1
    if isinstance(positive, bool) or not isinstance(positive, int):
        raise VTSSError(f"positive must be a class index (int), got {positive!r}.")
    if not 0 <= positive < num_classes:
        raise VTSSError(f"positive must lie in [0, {num_classes - 1}], got {positive}.")
    return positive


def _ranking_metrics(
    prob: Tensor, target: Tensor, num_classes: int, positive: int
) -> dict[str, float]:
    """AUPRC/AUROC of ``positive`` (binary) or their macro one-vs-rest means."""
    ranked = target.unique().numel() >= 2
    nan = float("nan")
    if num_classes == 2:
        score, is_pos = prob[:, positive], (target == positive).long()
        return {
            "auprc": float(BinaryAveragePrecision()(score, is_pos)) if ranked else nan,
            "auroc": float(BinaryAUROC()(score, is_pos)) if ranked else nan,
        }
    if not ranked:
        return {"macro_auroc": nan, "macro_auprc": nan}
    auroc = MulticlassAUROC(num_classes=num_classes, average="macro")
    auprc = MulticlassAveragePrecision(num_classes=num_classes, average="macro")
    return {"macro_auroc": float(auroc(prob, target)), "macro_auprc": float(auprc(prob, target))}
