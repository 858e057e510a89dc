"""vtss-lightning: validation-tuned synthetic size for imbalanced classification."""

from vtss_lightning.data import (
    ImageDataModule,
    SyntheticAugmentationDataModule,
    TabularDataModule,
)
from vtss_lightning.errors import VTSSError
from vtss_lightning.search import VTSSCallback, VTSSResult, VTSSTuner

__all__ = [
    "ImageDataModule",
    "SyntheticAugmentationDataModule",
    "TabularDataModule",
    "VTSSCallback",
    "VTSSError",
    "VTSSResult",
    "VTSSTuner",
]
__version__ = "0.1.0"
