"""Logistic regression and MLPs for encoded tables, sized from the data."""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from vtss_lightning.errors import VTSSError
from vtss_lightning.metrics import BalancedCrossEntropy


class TabularClassifier(pl.LightningModule):
    """Logistic regression (``hidden_dims=[]``) or an MLP, trained by plain ERM.

    The input width and class count come from the DataModule when the trainer calls
    ``configure_model``, so configs never state them. With ``optimizer="lbfgs"`` the
    model asks for full-batch data (``full_batch``) and each training step runs L-BFGS
    with a strong-Wolfe line search to convergence: for ``hidden_dims=[]`` and
    ``weight_decay=0`` that is the maximum-likelihood logistic regression the paper
    fits. Binary problems use one logit (class 0 fixed at 0), so the parameters are
    identifiable.

    Parameters
    ----------
    hidden_dims
        Widths of the hidden layers; empty for logistic regression.
    optimizer
        ``"lbfgs"`` (full batch, to convergence) or ``"adamw"`` (mini-batch).
    lr
        Learning rate; defaults to 1.0 for L-BFGS and 1e-3 for AdamW.
    weight_decay
        L2 penalty on weights (not biases); added to the loss for L-BFGS.
    dropout
        Dropout after each hidden layer.
    max_iter
        L-BFGS iterations per training step.
    n_features, num_classes
        Only needed without a VTSS DataModule; otherwise read from the data.
    """

    def __init__(
        self,
        hidden_dims: list[int] | None = None,
        optimizer: Literal["lbfgs", "adamw"] = "lbfgs",
        lr: float | None = None,
        weight_decay: float = 0.0,
        dropout: float = 0.0,
        max_iter: int = 500,
        n_features: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        hidden_dims = list(hidden_dims or [])
        if optimizer not in ("lbfgs", "adamw"):
            raise VTSSError(f"optimizer must be 'lbfgs' or 'adamw', got {optimizer!r}")
        if any(h < 1 for h in hidden_dims):
            raise VTSSError(f"hidden_dims must be positive widths, got {hidden_dims}")
        if lr is not None and lr <= 0:
            raise VTSSError(f"lr must be > 0, got {lr}")
        if weight_decay < 0 or not 0 <= dropout < 1:
            raise VTSSError("weight_decay must be >= 0 and dropout in [0, 1)")
        self.save_hyperparameters()
        self.hidden_dims = hidden_dims
        self.full_batch = optimizer == "lbfgs"
        self.net: nn.Module | None = None
        if n_features is not None and num_classes is not None:
            self.build(n_features, num_classes)

    # ---------------------------------------------------------------- building
    def build(self, n_features: int, num_classes: int) -> None:
        """Create the layers and metrics for ``n_features`` inputs and ``num_classes``."""
        if num_classes < 2:
            raise VTSSError(f"num_classes must be >= 2, got {num_classes}")
        self.hparams.n_features, self.hparams.num_classes = int(n_features), int(num_classes)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = n_features
        for h in self.hidden_dims:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if self.hparams.dropout > 0:
                layers.append(nn.Dropout(self.hparams.dropout))
            width = h
        layers.append(nn.Linear(width, 1 if num_classes == 2 else num_classes))
        self.net = nn.Sequential(*layers)
        self.val_balanced_loss = BalancedCrossEntropy(num_classes)
        self.val_balanced_accuracy = MulticlassAccuracy(num_classes, average="macro")

    def configure_from_data(self, datamodule) -> None:
        """Size the network from a set-up VTSS DataModule (idempotent)."""
        if self.net is None:
            self.build(datamodule.n_features, datamodule.num_classes)

    def configure_model(self) -> None:
        if self.net is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "n_features"):
            raise VTSSError(
                "TabularClassifier needs n_features and num_classes, or a VTSS DataModule to read them from"
            )
        self.configure_from_data(dm)

    # ---------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        if self.net is None:
            raise VTSSError(
                "the model is not built yet; fit it with a VTSS DataModule or call build()"
            )
        z = self.net(x)
        if self.num_classes == 2:
            return torch.cat([torch.zeros_like(z), z], dim=1)
        return z

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss(self(x), y)
        if self.full_batch and self.hparams.weight_decay > 0:
            weights = [m.weight for m in self.net.modules() if isinstance(m, nn.Linear)]
            loss = loss + 0.5 * self.hparams.weight_decay * sum(w.pow(2).sum() for w in weights)
        if self.trainer.loggers or self.trainer.progress_bar_callback is not None:
            # Skipped in VTSS's inner fits (no logger, no bar): logging dominates tiny steps.
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.val_balanced_loss.update(logits, y)
        self.val_balanced_accuracy.update(logits.argmax(1), y)
        self.log("val_balanced_loss", self.val_balanced_loss, prog_bar=True)
        self.log("val_balanced_accuracy", self.val_balanced_accuracy)

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "lbfgs":
            return torch.optim.LBFGS(
                self.parameters(),
                lr=hp.lr or 1.0,
                max_iter=hp.max_iter,
                tolerance_grad=1e-9,
                tolerance_change=1e-12,
                history_size=20,
                line_search_fn="strong_wolfe",
            )
        decay = [p for n, p in self.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.named_parameters() if p.ndim <= 1]
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=hp.lr or 1e-3,
        )
