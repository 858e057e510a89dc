"""DataModules that mix real rows with a prefix of a synthetic pool."""

from vtss_lightning.data.datamodule import SyntheticAugmentationDataModule
from vtss_lightning.data.image import ImageDataModule
from vtss_lightning.data.pool import SyntheticPool
from vtss_lightning.data.schema import FeatureSchema
from vtss_lightning.data.tabular import TabularDataModule

__all__ = [
    "FeatureSchema",
    "ImageDataModule",
    "SyntheticAugmentationDataModule",
    "SyntheticPool",
    "TabularDataModule",
]
