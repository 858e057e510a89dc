"""Logistic regression and MLPs for encoded tables, sized from the data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vtss_lightning.errors import VTSSError
from vtss_lightning.models.base import BalancedClassifier, check_class_weight


class TabularClassifier(BalancedClassifier):
    """Logistic regression (``hidden_dims=[]``) or an MLP, trained by plain ERM.

    The input width and class count come from the DataModule when the trainer calls
    ``configure_model``, so configs never state them. With ``optimizer="lbfgs"`` the
    model asks for full-batch data (``full_batch``) and each training step runs L-BFGS
    with a strong-Wolfe line search to convergence: for ``hidden_dims=[]`` that is
    L2-regularised logistic regression like scikit-learn's ``LogisticRegression()``
    (``weight_decay="auto"``), or the maximum-likelihood fit the paper uses with
    ``weight_decay=0``. Binary problems use one logit (class 0 fixed at 0), so the parameters are
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
        L2 penalty on weights (not biases): ``lambda / 2 * ||w||^2`` added to the mean
        loss for L-BFGS, decoupled decay for AdamW. ``"auto"`` (default) is
        scikit-learn's ``C=1`` for L-BFGS, ``lambda = 1 / n`` with ``n`` the rows of
        the fit (real + synthetic), so a small table cannot drive the logits to
        infinity (unregularised fits overfit small tables, with balanced losses worse
        than a constant predictor's); for AdamW it is 0.
    dropout
        Dropout after each hidden layer.
    max_iter
        L-BFGS iterations per training step.
    loss
        ``"cross_entropy"`` (log loss) or ``"mse"``: squared error on 0/1 (one-hot)
        targets, the squared-loss setting of the paper's experiments 3-5. The
        selection criterion is the balanced mean of the same loss.
    fit_intercept
        Give the output layer a bias; ``False`` matches the paper's no-intercept
        squared-loss experiments.
    class_weight
        Cost-sensitive ERM, the non-synthetic baseline: ``"balanced"`` weighs each
        class by ``n / (C * n_k)`` on the real training rows, a number ``w`` weighs
        the minority class of a binary task (the class with fewer real training rows;
        class index 1 when the model is built without data) by ``w``. The loss is the
        weighted mean; validation stays unweighted and balanced.
    random_features, rff_lengthscale
        Prepend that many fixed random Fourier features of an RBF kernel with this
        length-scale (``sqrt(2/D) cos(Wx + b)``; not trained), e.g. logistic
        regression on 100 RFF features as in the paper's experiment 2.
    n_features, num_classes
        Only needed without a VTSS DataModule; otherwise read from the data.
    """

    def __init__(
        self,
        hidden_dims: list[int] | None = None,
        optimizer: Literal["lbfgs", "adamw"] = "lbfgs",
        lr: float | None = None,
        weight_decay: float | Literal["auto"] = "auto",
        dropout: float = 0.0,
        max_iter: int = 500,
        loss: Literal["cross_entropy", "mse"] = "cross_entropy",
        fit_intercept: bool = True,
        class_weight: float | Literal["balanced"] | None = None,
        random_features: int = 0,
        rff_lengthscale: float = 1.0,
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
        if (
            weight_decay != "auto"
            and (isinstance(weight_decay, str) or weight_decay < 0)
            or not 0 <= dropout < 1
        ):
            raise VTSSError("weight_decay must be >= 0 and dropout in [0, 1)")
        if loss not in ("cross_entropy", "mse"):
            raise VTSSError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")
        check_class_weight(class_weight)
        if random_features < 0 or rff_lengthscale <= 0:
            raise VTSSError("random_features must be >= 0 and rff_lengthscale > 0")
        self.save_hyperparameters()
        self.hidden_dims = hidden_dims
        self.full_batch = optimizer == "lbfgs"
        self.net: nn.Module | None = None
        if n_features is not None and num_classes is not None:
            self.build(n_features, num_classes)

    # ---------------------------------------------------------------- building
    def build(
        self, n_features: int, num_classes: int, class_counts: list[int] | None = None
    ) -> None:
        """Create the layers and metrics for ``n_features`` inputs and ``num_classes``.

        ``class_counts`` (real training rows per class) is needed only for
        ``class_weight="balanced"``.
        """
        if num_classes < 2:
            raise VTSSError(f"num_classes must be >= 2, got {num_classes}")
        hp = self.hparams
        hp.n_features, hp.num_classes = int(n_features), int(num_classes)
        self.init_targets(num_classes, class_counts)
        layers: list[nn.Module] = []
        width = n_features
        if hp.random_features:
            layers.append(RandomFourierFeatures(width, hp.random_features, hp.rff_lengthscale))
            width = hp.random_features
        for h in self.hidden_dims:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if self.hparams.dropout > 0:
                layers.append(nn.Dropout(self.hparams.dropout))
            width = h
        out = 1 if num_classes == 2 else num_classes
        layers.append(nn.Linear(width, out, bias=hp.fit_intercept))
        self.net = nn.Sequential(*layers)

    def configure_from_data(self, datamodule) -> None:
        """Size the network from a set-up VTSS DataModule (idempotent)."""
        if self.net is None:
            counts = datamodule.holdout.class_counts if hasattr(datamodule, "holdout") else None
            self.build(datamodule.n_features, datamodule.num_classes, counts)

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
        """Scores of shape ``(N, num_classes)``: logits, or for ``loss="mse"`` the
        regression outputs (binary: ``[0.5, f(x)]`` so that argmax thresholds at 0.5)."""
        if self.net is None:
            raise VTSSError(
                "the model is not built yet; fit it with a VTSS DataModule or call build()"
            )
        z = self.net(x)
        if self.num_classes == 2:
            base = 0.5 if self.hparams.loss == "mse" else 0.0
            return torch.cat([torch.full_like(z, base), z], dim=1)
        return z

    def forward_stacked(
        self,
        params: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
        x: torch.Tensor,
    ) -> torch.Tensor:
        """Scores of K copies at once, weights stacked along dim 0: ``(K, N, F) -> (K, N, C)``,
        or ``(N, F) -> (K, N, C)`` for rows every copy shares.

        What ``strategy="parallel"`` runs instead of ``vmap(functional_call(self))``:
        one fused ``baddbmm`` per linear layer (vmap's rule splits it into a matmul and
        a separate bias add, about a quarter slower on a CPU); on shared rows the first
        layer is one GEMM over the copies' weights side by side (the joint full-batch
        L-BFGS solve, where every candidate's rows are part of the largest one's). Same
        maths as :meth:`forward`; Dropout draws its own mask per copy.
        """
        h = x
        for name, layer in self.net.named_children():
            key = f"net.{name}."
            if isinstance(layer, nn.Linear | RandomFourierFeatures):
                group = params if key + "weight" in params else buffers
                h = _stacked_linear(h, group[key + "weight"], group.get(key + "bias"))
                if isinstance(layer, RandomFourierFeatures):
                    h = layer.scale * torch.cos(h)
            else:  # ReLU, Dropout: elementwise, any leading shape
                h = layer(h)
        if self.num_classes == 2:
            base = 0.5 if self.hparams.loss == "mse" else 0.0
            return torch.cat([torch.full_like(h, base), h], dim=-1)
        return h

    def per_sample_loss(self, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Unweighted loss of each row; its balanced mean is the selection criterion."""
        if self.hparams.loss == "cross_entropy":
            return F.cross_entropy(scores, y, reduction="none")
        if self.num_classes == 2:
            return (scores[:, 1] - y.to(scores.dtype)).pow(2)
        return (scores - F.one_hot(y, self.num_classes).to(scores.dtype)).pow(2).sum(1)

    @property
    def convex_objective(self) -> bool:
        """Whether the training objective is convex in the parameters: a linear model
        (``hidden_dims=[]``; random features are fixed buffers) under log or squared loss,
        strictly convex with the L2 penalty. ``strategy="parallel"`` then solves the
        candidates' full-batch L-BFGS fits as one problem."""
        return not self.hidden_dims

    def l2_strength(self, n_rows: int) -> float:
        """The L2 ``lambda`` of a fit on ``n_rows`` rows (``"auto"``: 1/n for L-BFGS)."""
        wd = self.hparams.weight_decay
        if wd == "auto":
            return 1.0 / max(1, n_rows) if self.full_batch else 0.0
        return float(wd)

    def penalty(self, n_rows: int = 0) -> torch.Tensor | float:
        """L-BFGS fits add the L2 penalty to the loss (AdamW applies it as decay)."""
        strength = self.l2_strength(n_rows)
        if not (self.full_batch and strength > 0):
            return 0.0
        weights = [m.weight for m in self.net.modules() if isinstance(m, nn.Linear)]
        return 0.5 * strength * sum(w.pow(2).sum() for w in weights)

    def penalty_stacked(
        self, params: dict[str, torch.Tensor], n_rows: Sequence[int]
    ) -> torch.Tensor:
        """:meth:`penalty` of K copies at once, weights stacked along dim 0, copy ``k``
        fitted on ``n_rows[k]`` rows: ``(K,)``. What ``strategy="parallel"`` adds to its
        joint full-batch objective (one call instead of one per candidate)."""
        first = next(iter(params.values()))
        strengths = [self.l2_strength(n) if self.full_batch else 0.0 for n in n_rows]
        lam = torch.tensor(strengths, dtype=first.dtype, device=first.device)
        keys = [f"net.{n}.weight" for n, m in self.net.named_modules() if isinstance(m, nn.Linear)]
        squares = sum(params[k].pow(2).flatten(1).sum(1) for k in keys)
        return 0.5 * lam * squares

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
                {"params": decay, "weight_decay": self.l2_strength(0)},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=hp.lr or 1e-3,
        )


def _stacked_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """K linear layers at once: ``h`` ``(K, N, in)`` or ``(N, in)`` shared by every copy,
    ``weight`` ``(K, out, in)``, ``bias`` ``(K, out)`` or ``None`` -> ``(K, N, out)``."""
    if h.dim() == 2:  # one GEMM: the copies' weights side by side
        k, out = weight.shape[:2]
        flat = weight.reshape(k * out, -1).T
        z = h @ flat if bias is None else torch.addmm(bias.reshape(1, k * out), h, flat)
        return z.view(len(h), k, out).transpose(0, 1)
    w = weight.transpose(1, 2)
    return torch.bmm(h, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, w)


class RandomFourierFeatures(nn.Module):
    """Fixed random features of an RBF kernel: ``sqrt(2/D) cos(x W^T + b)``.

    ``W ~ N(0, 1/lengthscale^2)`` and ``b ~ U(0, 2 pi)`` are drawn once from the
    global torch RNG (seed it for repeatable models) and stored as buffers, so they
    travel with checkpoints but are never trained.
    """

    def __init__(self, in_features: int, out_features: int, lengthscale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(out_features, in_features) / lengthscale)
        self.register_buffer("bias", torch.rand(out_features) * 2 * math.pi)
        self.scale = math.sqrt(2.0 / out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.cos(x @ self.weight.T + self.bias)
