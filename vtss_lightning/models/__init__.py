"""Classifiers that size themselves from a VTSS DataModule."""

from vtss_lightning.models.tabular import TabularClassifier

__all__ = ["TabularClassifier"]
