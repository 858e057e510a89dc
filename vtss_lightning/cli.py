"""``vtss``: LightningCLI with the VTSS callback wired in (``vtss fit --config …``)."""

from __future__ import annotations

import sys

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

from vtss_lightning.data.datamodule import SyntheticAugmentationDataModule
from vtss_lightning.errors import VTSSError
from vtss_lightning.search.callback import VTSSCallback


class VTSSLightningCLI(LightningCLI):
    """LightningCLI whose ``vtss:`` section configures the always-present VTSSCallback."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(VTSSCallback, "vtss")


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
