"""vtss-lightning: validation-tuned synthetic size for imbalanced classification."""

from vtss_lightning._runtime import skip_nvml_check_without_gpu
from vtss_lightning.data import (
    ImageDataModule,
    SyntheticAugmentationDataModule,
    TabularDataModule,
)
from vtss_lightning.errors import VTSSError
from vtss_lightning.search import VTSSCallback, VTSSResult, VTSSTuner

skip_nvml_check_without_gpu()  # after Lightning's import set the flag (see _runtime)

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
