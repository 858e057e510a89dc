"""Classifiers that size themselves from a VTSS DataModule."""

from vtss_lightning.models.base import BalancedClassifier
from vtss_lightning.models.image import ImageClassifier
from vtss_lightning.models.tabular import TabularClassifier

__all__ = ["BalancedClassifier", "ImageClassifier", "TabularClassifier"]
