"""K copies of one module trained as one stacked model (``torch.func``), VTSS-agnostic.

The mechanics behind ``strategy="parallel"``: why a module, optimizer or trainer
setting cannot be stacked; the module's own optimizer rebuilt over stacked
parameters (an elementwise optimizer over stacked tensors with the *sum* of member
losses is exactly K independent optimizers); the vmapped training loss and
validation losses; and moving members in and out of a stack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from vtss_lightning._random import EVAL_CHUNK_ROWS

#: Optimizers whose update of each element depends only on that element's history.
ELEMENTWISE = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adagrad,
    torch.optim.RMSprop,
)
#: Group keys that choose an implementation, not the maths; set afresh for the stack.
_IMPL_KEYS = ("params", "foreach", "fused", "capturable", "differentiable")


@dataclass
class OptimizerSpec:
    """The module's optimizer: its class and, per group, parameter names and settings."""

    cls: type[torch.optim.Optimizer]
    groups: list[tuple[list[str], dict]]

    def build(self, params: dict[str, torch.Tensor]) -> torch.optim.Optimizer:
        """The same optimizer over stacked parameters (fused kernels where available)."""
        groups = [{"params": [params[n] for n in names], **hp} for names, hp in self.groups]
        for impl in ({"fused": True}, {"foreach": True}, {}):
            try:
                return self.cls(groups, **impl)
            except (RuntimeError, TypeError, ValueError):
                continue
        raise RuntimeError(f"cannot build {self.cls.__name__} over the stacked parameters")


@dataclass
class MemberState:
    """One member outside a stack: parameters, buffers and per-parameter optimizer state.

    ``shared`` holds optimizer entries common to every member of a stack (Adam's step
    count); members are only stacked together at equal step counts.
    """

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    opt: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    shared: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def weights(self) -> dict[str, torch.Tensor]:
        return {**self.params, **self.buffers}


def optimizer_spec(module: nn.Module, also: tuple[type, ...] = ()) -> OptimizerSpec | str:
    """The module's optimizer as a spec, or why it cannot be stacked (one line).

    ``also``: optimizer classes accepted beside the elementwise ones (``LBFGS`` for the
    joint full-batch solve of :mod:`._full_batch`).
    """
    try:
        out = module.configure_optimizers()
    except Exception as err:  # noqa: BLE001 - any failure means: cannot stack
        return f"configure_optimizers() failed outside a Trainer ({_first_line(err)})"
    if isinstance(out, dict):
        if set(out) - {"optimizer"}:
            return "configure_optimizers() returns an LR scheduler, which parallel does not replay"
        out = out["optimizer"]
    if isinstance(out, list | tuple):
        if len(out) != 1 or not isinstance(out[0], torch.optim.Optimizer):
            return "configure_optimizers() returns several optimizers or a scheduler"
        out = out[0]
    if not isinstance(out, torch.optim.Optimizer):
        return f"configure_optimizers() returns {type(out).__name__}, not one torch optimizer"
    if type(out) not in ELEMENTWISE + tuple(also):
        names = ", ".join(c.__name__ for c in ELEMENTWISE)
        return (
            f"{type(out).__name__} is not elementwise (a line search or per-tensor norm couples "
            f"the members); parallel supports {names}"
        )
    name_of = {id(p): n for n, p in module.named_parameters()}
    groups = []
    for g in out.param_groups:
        if any(id(p) not in name_of for p in g["params"]):
            return "the optimizer holds tensors that are not parameters of the module"
        hp = {k: v for k, v in g.items() if k not in _IMPL_KEYS}
        groups.append(([name_of[id(p)] for p in g["params"]], hp))
    return OptimizerSpec(type(out), groups)


def training_loss(module: nn.Module) -> Callable | None:
    """``loss(scores, y)`` of the module (its ``loss``, else mean ``per_sample_loss``)."""
    loss = getattr(module, "loss", None)
    if callable(loss):
        return loss
    per_row = getattr(module, "per_sample_loss", None)
    if callable(per_row):
        return lambda scores, y: per_row(scores, y).mean()
    return None


def member_rows(per_sample_loss: Callable, scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``per_sample_loss`` of every member's rows in one call: scores ``(K, N, ...)`` and
    labels ``(K, N, ...)`` flattened to ``K * N`` rows, the losses back as ``(K, N)``
    (a per-row loss does not depend on the other rows)."""
    k, n = y.shape[:2]
    flat = per_sample_loss(scores.reshape(k * n, *scores.shape[2:]), y.reshape(k * n, *y.shape[2:]))
    return flat.view(k, n)


def stacked_mean_loss(module: nn.Module) -> Callable | None:
    """``loss(scores (K, B, C), y (K, B)) -> (K,)`` of the package's own classifiers: their
    class-weighted mean per-row loss over every member's rows in one kernel call, which
    a ``vmap`` of ``loss`` runs as a slower decomposition. ``None`` for a module with its
    own ``loss`` or ``per_sample_loss`` (then the ``vmap``)."""
    from vtss_lightning.models.base import BalancedClassifier
    from vtss_lightning.models.image import ImageClassifier
    from vtss_lightning.models.tabular import TabularClassifier

    own = (TabularClassifier.per_sample_loss, ImageClassifier.per_sample_loss)
    if (
        not isinstance(module, BalancedClassifier)
        or type(module).loss is not BalancedClassifier.loss
    ):
        return None
    if type(module).per_sample_loss not in own:
        return None

    def loss(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = member_rows(module.per_sample_loss, scores, y)
        if module.hparams.class_weight is None:
            return rows.mean(1)
        w = module.class_weights[y]
        return (w * rows).sum(1) / w.sum(1)

    return loss


def row_loss(module: nn.Module) -> Callable:
    """Per-row validation loss: the module's ``per_sample_loss``, else cross-entropy."""
    per_row = getattr(module, "per_sample_loss", None)
    if callable(per_row):
        return per_row
    return lambda scores, y: F.cross_entropy(scores, y, reduction="none")


def initial_state(module: nn.Module, device: torch.device) -> MemberState:
    return MemberState(
        {n: p.detach().to(device).clone() for n, p in module.named_parameters()},
        {n: b.detach().to(device).clone() for n, b in module.named_buffers()},
    )


class Stack:
    """Members stacked along a new leading dimension, with the optimizer over them
    (``spec=None``: no optimizer, to evaluate members trained elsewhere)."""

    def __init__(
        self,
        module: nn.Module,
        states: list[MemberState],
        spec: OptimizerSpec | None,
        batched: bool = False,
    ):
        self.module = module
        grads = {n: p.requires_grad for n, p in module.named_parameters()}
        self.params = {
            n: torch.stack([s.params[n] for s in states]).requires_grad_(grads[n])
            for n in states[0].params
        }
        self.buffers = {n: torch.stack([s.buffers[n] for s in states]) for n in states[0].buffers}
        self.optimizer = spec.build(self.params) if spec is not None else None
        for n, p in self.params.items():
            if self.optimizer is not None and n in states[0].opt:
                entry = {k: torch.stack([s.opt[n][k] for s in states]) for k in states[0].opt[n]}
                entry.update({k: v.clone() for k, v in states[0].shared.get(n, {}).items()})
                self.optimizer.state[p] = entry
        self.size = len(states)
        loss = training_loss(module)
        rows = row_loss(module)
        # Untying shared weights costs a module walk per call; only needed when some exist.
        tied = len(list(module.named_parameters(remove_duplicate=False))) != len(grads)

        def member_loss(p, b, x, y):
            return loss(functional_call(module, (p, b), (x,), tie_weights=tied), y)

        def member_rows(p, b, x, y):
            return rows(functional_call(module, (p, b), (x,), tie_weights=tied), y)

        self._train = vmap(member_loss, in_dims=(0, 0, 0, 0), randomness="different")
        # Batched layers where the module offers them and they were checked
        # (forward_stacked_agrees), vmap otherwise.
        self._forward_stacked = getattr(module, "forward_stacked", None) if batched else None
        self._loss = stacked_mean_loss(module) or vmap(loss, in_dims=(0, 0))
        self._rows = vmap(member_rows, in_dims=(0, 0, None, None), randomness="different")

    def subset(self, idx: list[int] | None):
        """Parameters and buffers of some members (all when ``idx`` is None)."""
        if idx is None:
            return self.params, self.buffers
        t = torch.as_tensor(idx, device=next(iter(self.params.values())).device)
        return {n: p[t] for n, p in self.params.items()}, {n: b[t] for n, b in self.buffers.items()}

    def step(self, groups: list[tuple[list[int] | None, torch.Tensor, torch.Tensor]]) -> None:
        """One optimizer step; each group is (members or None for all, x, y) of equal length."""
        if not self.module.training:  # train() walks every submodule; once per stack is enough
            self.module.train()
        total = None
        for idx, x, y in groups:
            p, b = self.subset(idx)
            if self._forward_stacked is not None:
                loss = self._loss(self._forward_stacked(p, b, x), y).sum()
            else:
                loss = self._train(p, b, x, y).sum()
            total = loss if total is None else total + loss
            if idx is not None and self.buffers:  # running statistics updated on copies
                t = torch.as_tensor(idx, device=x.device)
                with torch.no_grad():
                    for n, buf in b.items():
                        self.buffers[n].index_copy_(0, t, buf)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()

    @torch.no_grad()
    def balanced_losses(
        self, idx: list[int] | None, x: torch.Tensor, y: torch.Tensor, num_classes: int
    ) -> torch.Tensor:
        """Balanced validation loss of each member in ``idx`` (eval mode), on the device."""
        p, b = self.subset(idx)
        self.module.eval()
        try:
            rows = torch.cat(
                [
                    self._rows(p, b, x[i : i + EVAL_CHUNK_ROWS], y[i : i + EVAL_CHUNK_ROWS]).float()
                    for i in range(0, len(y), EVAL_CHUNK_ROWS)
                ],
                dim=1,
            )
        finally:
            self.module.train()
        onehot = F.one_hot(y, num_classes).to(rows.dtype)
        counts = onehot.sum(0)
        seen = counts > 0
        means = (rows @ onehot)[:, seen] / counts[seen]
        return means.mean(1)

    def unstack(self) -> list[MemberState]:
        """Every member's state, detached copies (the stack may be discarded after)."""
        out = []
        for j in range(self.size):
            state = MemberState(
                {n: p[j].detach().clone() for n, p in self.params.items()},
                {n: b[j].detach().clone() for n, b in self.buffers.items()},
            )
            for n, p in self.params.items():
                entry = self.optimizer.state.get(p) if self.optimizer is not None else None
                if not entry:
                    continue
                per = {k: v for k, v in entry.items() if torch.is_tensor(v) and v.shape == p.shape}
                state.opt[n] = {k: v[j].detach().clone() for k, v in per.items()}
                state.shared[n] = {k: v for k, v in entry.items() if k not in per}
            out.append(state)
        return out

    def member_weights(self, j: int) -> dict[str, torch.Tensor]:
        return {
            **{n: p[j].detach() for n, p in self.params.items()},
            **{n: b[j] for n, b in self.buffers.items()},
        }


def forward_stacked_agrees(module: nn.Module, state: MemberState, x: torch.Tensor) -> bool:
    """Whether ``module.forward_stacked`` computes what ``vmap(functional_call)`` does.

    Checked on two members with different weights in eval mode, so that a subclass
    that changes ``forward`` but inherits ``forward_stacked`` falls back to vmap.
    """
    fn = getattr(module, "forward_stacked", None)
    if not callable(fn):
        return False
    gen = torch.Generator().manual_seed(0)
    params = {
        n: torch.stack([t, t + 0.1 * torch.randn(t.shape, generator=gen).to(t)])
        for n, t in state.params.items()
    }
    buffers = {n: torch.stack([t, t]) for n, t in state.buffers.items()}
    xs = torch.stack([x, x])
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want = vmap(lambda p, b, xi: functional_call(module, (p, b), (xi,)))(
                params, buffers, xs
            )
            got = fn(params, buffers, xs)
        return got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    except Exception:  # noqa: BLE001 - any failure: use vmap
        return False
    finally:
        module.train(was_training)


def without_metrics(module: nn.Module) -> nn.Module:
    """``module`` (a private copy) without its torchmetrics submodules.

    Metrics play no part in ``forward`` or the loss, but every ``functional_call`` and
    ``train()`` walks the module tree, and a metric's ``__hash__`` hashes its state.
    """
    try:
        from torchmetrics import Metric
    except ImportError:  # pragma: no cover - torchmetrics is a dependency
        return module
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Metric):
                delattr(parent, name)
    return module


def activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one forward pass on ``x`` (training mode)."""
    total = 0

    def hook(_mod, _inp, out):
        nonlocal total
        if torch.is_tensor(out):
            total += out.numel() * out.element_size()

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return total


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"
