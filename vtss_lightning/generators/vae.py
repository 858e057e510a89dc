"""A variational autoencoder per minority class (or one class-conditional VAE of every
class): MLP for tables, small CNN for images."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from vtss_lightning._random import seeded
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.errors import VTSSError
from vtss_lightning.generators._common import check_float, check_int, cpu_generator
from vtss_lightning.generators._deep import (
    TRAIN_PARAMS,
    OneNetGenerator,
    TrainSettings,
    autocast,
    autocast_dtype,
    check_image_rows,
    column_scaler,
    fit_net,
    in_chunks,
    train_settings,
)
from vtss_lightning.generators.nets import ConvVAENet, TabularVAENet, pad_image, padded_size

#: Default optimizer steps when neither ``steps`` nor ``epochs`` is given.
DEFAULT_STEPS = {"table": 1500, "image": 1000}
DEFAULT_BATCH = {"table": 128, "image": 64}


class VAEGenerator(OneNetGenerator):
    """A VAE fitted to one class's rows; samples decode ``z ~ N(0, I)``.

    By default the DataModule fits one copy per minority class on that class's
    training rows (one unconditional model per class: every class's generator is
    blind to the other classes). With ``conditional=True`` it is one conditional VAE
    (CVAE, Sohn et al. 2015) fitted once per split on the training rows of *every*
    class, encoder and decoder reading the class one-hot; class ``k`` is sampled by
    decoding ``z ~ N(0, I)`` with label ``k``, so small classes borrow the shape the
    classes share. The variant is chosen from the schema:

    * **table** (``schema.image_shape is None``): MLP encoder/decoder (two hidden
      layers of ``width``). Numeric columns are standardised on the class rows and
      get a Gaussian likelihood with a learned per-column noise scale (as in TVAE);
      each categorical one-hot block gets a softmax head and a cross-entropy term.
      Sampling adds the learned noise to the decoded means and draws each block's
      category from its softmax (``categorical="sample"``, default) or takes the most
      likely one (``"argmax"``, which loses rare categories); blocks are exact one-hot.
    * **image** (``schema.image_shape`` set, pixels in ``[0, 1]``): two stride-2
      convolutions each way (images padded to a multiple of 4 internally), Bernoulli
      likelihood on the pixels (binary cross-entropy with continuous targets);
      samples are the decoder's mean images, in ``[0, 1]``.

    Training: AdamW, ``steps`` optimizer steps (or ``epochs`` passes), warm-up and
    cosine decay, on :attr:`device` with bf16/fp16 autocast on CUDA
    (``precision``); weights and training noise come from ``seed`` only. Sampling
    draws from a seeded CPU generator, so a seed gives the same rows.

    Parameters
    ----------
    steps, epochs
        Training budget in optimizer steps, or in passes over the class rows (not
        both). Default 1500 (table) / 1000 (image) steps: seconds to a minute on
        one CPU core for a few hundred rows.
    width
        Hidden units (table, default 128) or base channels (image, default 16
        below 16 px, 32 from 16 px).
    latent_dim
        Size of ``z``.
    lr, weight_decay, batch_size
        AdamW settings; ``batch_size=None`` means 128 rows (table) / 64 images.
        Batches are capped at the class size.
    beta
        Weight of the KL term (1 = the ELBO).
    categorical
        ``"sample"`` or ``"argmax"``: how a categorical block is decoded.
    precision
        ``"auto"`` (bf16 on CUDA when supported, else fp16; float32 on CPU),
        ``"32"``, ``"bf16"`` or ``"16"``.
    verbose, log_every
        Print the mean loss every ``log_every`` steps (``loss_history_`` keeps them).
    sample_batch
        Rows decoded at once when sampling.
    conditional
        ``False`` (default): one model per class (:meth:`fit`). ``True``: one model of
        every class (:meth:`fit_labelled`, ``sample(n, seed, label=k)``); numeric
        columns are then standardised on the rows of all classes, each class has its
        own learned noise scales, and the training budget is shared by all classes.
    """

    name: ClassVar[str] = "vae"
    min_rows: ClassVar[int] = 2

    def __init__(
        self,
        steps: int | None = None,
        epochs: int | None = None,
        width: int | None = None,
        latent_dim: int = 16,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int | None = None,
        beta: float = 1.0,
        categorical: Literal["sample", "argmax"] = "sample",
        precision: str = "auto",
        verbose: bool = False,
        log_every: int = 100,
        sample_batch: int = 4096,
        conditional: bool = False,
    ) -> None:
        super().__init__()
        who = "VAEGenerator"
        s = train_settings(
            who,
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            precision=precision,
            verbose=verbose,
            log_every=log_every,
        )
        self.steps, self.epochs, self.batch_size, self.lr = s.steps, s.epochs, s.batch_size, s.lr
        self.weight_decay, self.precision = s.weight_decay, s.precision
        self.verbose, self.log_every = s.verbose, s.log_every
        self.width = None if width is None else check_int(who, "width", width, 1)
        self.latent_dim = check_int(who, "latent_dim", latent_dim, 1)
        self.beta = check_float(who, "beta", beta, 0.0)
        if categorical not in ("sample", "argmax"):
            raise VTSSError(f"{who}: categorical must be 'sample' or 'argmax', got {categorical!r}")
        self.categorical = categorical
        self.sample_batch = check_int(who, "sample_batch", sample_batch, 1)
        if not isinstance(conditional, bool):
            raise VTSSError(f"{who}: conditional must be True or False, got {conditional!r}")
        self.conditional = conditional
        #: ``(step, mean training loss)`` records of the last fit.
        self.loss_history_: list[tuple[int, float]] = []

    @property
    def settings(self) -> TrainSettings:
        """The optimisation parameters, validated again (they may have been changed)."""
        return train_settings("VAEGenerator", **{n: getattr(self, n) for n in TRAIN_PARAMS})

    # ----------------------------------------------------------------- fitting

    def _fit_model(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        schema: FeatureSchema | None,
        seed: int,
        num_classes: int,
    ) -> None:
        """Fit the net (``y``, ``num_classes > 0``: the conditional one) in seeded scope."""
        assert schema is not None  # base.fit validated x and filled in the schema
        self._schema = schema
        self._n_classes = num_classes
        self.kind_ = "image" if schema.image_shape is not None else "table"
        settings = self.settings.resolved(DEFAULT_BATCH[self.kind_], self.settings.lr or 1e-3)
        steps = settings.total_steps(x.shape[0], DEFAULT_STEPS[self.kind_])
        # off the CPU, torch.manual_seed must seed the accelerator (CUDA or MPS) too
        with seeded(int(seed), cuda=self.device.type != "cpu"):
            if self.kind_ == "image":
                small = min(schema.image_shape[1:]) < 16  # type: ignore[index]
                loss_fn = self._build_image(x, schema, self.width or (16 if small else 32))
            else:
                loss_fn = self._build_table(x, schema, self.width or 128)
            self.loss_history_ = fit_net(
                self.net_, loss_fn, self._train_rows, settings, steps, seed, self.name, y=y
            )
        del self._train_rows

    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)

    def _reparameterise(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * (0.5 * logvar).exp()

    def _build_table(self, x: torch.Tensor, schema: FeatureSchema, width: int):
        device = x.device
        cat_cols = [j for g in schema.categorical_groups for j in g]
        in_cat = set(cat_cols)
        num_cols = [j for j in range(x.shape[1]) if j not in in_cat]
        self._num_idx = torch.as_tensor(num_cols, dtype=torch.long, device=device)
        self._cat_idx = torch.as_tensor(cat_cols, dtype=torch.long, device=device)
        sizes = [len(g) for g in schema.categorical_groups]
        self._sizes = sizes
        self._mean, self._std = column_scaler(x[:, self._num_idx])
        self._train_rows = torch.cat(
            [(x[:, self._num_idx] - self._mean) / self._std, x[:, self._cat_idx]], dim=1
        )
        n_num = len(num_cols)
        self.net_ = TabularVAENet(
            x.shape[1], n_num, len(cat_cols), width, self.latent_dim, self._n_classes
        ).to(device)
        # one-hot blocks as class indices, block after block (targets for cross-entropy)
        starts = torch.tensor([0, *sizes], device=device).cumsum(0)[:-1].tolist()
        net = self.net_

        def loss_fn(xb: torch.Tensor, yb: torch.Tensor | None = None) -> torch.Tensor:
            mu, logvar = net.encode(xb, yb)
            mean, logits = net.decode(self._reparameterise(mu, logvar), yb)
            sigma = net.sigma(yb)
            num = xb[:, :n_num]
            nll = (((num - mean.float()) / sigma) ** 2 / 2 + sigma.log()).sum(dim=1)
            cats = xb[:, n_num:]
            for s, k in zip(starts, sizes, strict=True):
                target = cats[:, s : s + k].argmax(dim=1)
                nll = nll + F.cross_entropy(logits[:, s : s + k].float(), target, reduction="none")
            return (nll + self.beta * self._kl(mu.float(), logvar.float())).mean()

        return loss_fn

    def _build_image(self, x: torch.Tensor, schema: FeatureSchema, width: int):
        check_image_rows(x, self.name)
        c, h, w = schema.image_shape  # type: ignore[misc]
        hp, wp = padded_size(h, 4), padded_size(w, 4)
        self._train_rows = x.clamp(0.0, 1.0)
        self.net_ = ConvVAENet(c, hp, wp, width, self.latent_dim, self._n_classes).to(x.device)
        net = self.net_

        def loss_fn(xb: torch.Tensor, yb: torch.Tensor | None = None) -> torch.Tensor:
            img = xb.reshape(-1, c, h, w)
            mu, logvar = net.encode(pad_image(img, hp, wp), yb)
            logits = net.decode(self._reparameterise(mu, logvar), yb)[:, :, :h, :w].float()
            nll = F.binary_cross_entropy_with_logits(logits, img, reduction="none").sum((1, 2, 3))
            return (nll + self.beta * self._kl(mu.float(), logvar.float())).mean()

        return loss_fn

    # ---------------------------------------------------------------- sampling

    def _generate(self, n: int, seed: int, label: int | None) -> torch.Tensor:
        """``n`` decoded draws of ``z ~ N(0, I)`` (of class ``label`` in a conditional VAE)."""
        device = self.device
        net = self.net_.to(device)
        g = cpu_generator(seed)
        dtype = autocast_dtype(device, self.settings.precision)
        width = self._schema.n_features
        draw = self._draw_image if self.kind_ == "image" else self._draw_table

        def chunk(m: int) -> torch.Tensor:
            z = torch.randn(m, self.latent_dim, generator=g).to(device)
            y = None if label is None else torch.full((m,), label, device=device)
            with torch.inference_mode(), autocast(device, dtype):
                return draw(net, z, g, y)

        return in_chunks(n, self.sample_batch, chunk, width, device)

    def _draw_image(
        self, net: ConvVAENet, z: torch.Tensor, g: torch.Generator, y: torch.Tensor | None
    ) -> torch.Tensor:
        c, h, w = self._schema.image_shape  # type: ignore[misc]
        img = torch.sigmoid(net.decode(z, y)[:, :, :h, :w].float())
        return img.reshape(len(z), c * h * w).clamp(0.0, 1.0)

    def _draw_table(
        self, net: TabularVAENet, z: torch.Tensor, g: torch.Generator, y: torch.Tensor | None
    ) -> torch.Tensor:
        device, m = z.device, len(z)
        mean, logits = net.decode(z, y)
        eps = torch.randn(m, mean.shape[1], generator=g).to(device)
        num = (mean.float() + eps * net.sigma(y).float()) * self._std.to(device) + self._mean.to(
            device
        )
        out = torch.zeros(m, self._schema.n_features, device=device)
        out[:, self._num_idx.to(device)] = num
        hot, s = [], 0
        u = torch.rand(m, len(self._sizes), generator=g).to(device)
        for i, k in enumerate(self._sizes):
            block = logits[:, s : s + k].float()
            if self.categorical == "argmax":
                pick = block.argmax(dim=1)
            else:  # inverse-CDF draw from the softmax with a seeded uniform
                cdf = block.softmax(dim=1).cumsum(dim=1)
                pick = (cdf < u[:, i : i + 1]).sum(dim=1).clamp(max=k - 1)
            hot.append(F.one_hot(pick, k).float())
            s += k
        if hot:
            out[:, self._cat_idx.to(device)] = torch.cat(hot, dim=1)
        return out
