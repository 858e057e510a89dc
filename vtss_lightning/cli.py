"""``vtss``: LightningCLI with the VTSS callback wired in (``vtss fit --config …``)."""

from __future__ import annotations

import sys

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

from vtss_lightning.data.datamodule import SyntheticAugmentationDataModule
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.callback import VTSSCallback


class VTSSLightningCLI(LightningCLI):
    """LightningCLI whose ``vtss:`` section configures the always-present VTSSCallback.

    The callback may instead be listed in ``trainer.callbacks`` (the usual LightningCLI
    way to add one); then that one runs, and setting both is an error.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(VTSSCallback, "vtss")

    def instantiate_trainer(self, **kwargs):
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        listed = [c for c in (config.get("callbacks") or []) if isinstance(c, VTSSCallback)]
        if not listed:
            return super().instantiate_trainer(**kwargs)
        if len(listed) > 1 or self._vtss_section_set():
            raise VTSSError(
                "VTSSCallback is configured twice (in trainer.callbacks and in the vtss: "
                "section); keep one of them"
            )
        return self._instantiate_trainer(config, [])

    def _vtss_section_set(self) -> bool:
        """Whether the ``vtss:`` section differs from VTSSCallback's defaults."""
        parser = self._parser(self.subcommand)
        given = self._get(self.config, "vtss", default=None)
        defaults = parser.get_defaults().get("vtss")
        return given is not None and _as_dict(given) != _as_dict(defaults)


def main(args: list[str] | None = None) -> None:
    """Entry point; user-fixable errors print one line and exit with status 2."""
    try:
        VTSSLightningCLI(
            model_class=pl.LightningModule,
            datamodule_class=SyntheticAugmentationDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            auto_configure_optimizers=False,
            # with ``logger: false`` every run saves config.yaml into the same folder;
            # rerunning a command must not fail on the previous run's copy
            save_config_kwargs={"overwrite": True},
        )
    except VTSSError as exc:
        print(f"vtss: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # jsonargparse wraps errors raised while instantiating
        cause = _vtss_cause(exc)
        if cause is None:
            raise
        print(f"vtss: error: {cause}", file=sys.stderr)
        sys.exit(2)


def _as_dict(namespace) -> dict:
    return namespace.as_dict() if hasattr(namespace, "as_dict") else dict(namespace or {})


def _vtss_cause(exc: BaseException) -> VTSSError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, VTSSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    main()
