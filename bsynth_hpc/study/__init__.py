"""Downstream studies on synthetic cohorts (seed 000 §5.3: synthetic-augmentation classifier study)."""
from .augment import add_study_parser, average_precision, binary_metrics, roc_auc, run_augment_study

__all__ = ["add_study_parser", "average_precision", "binary_metrics", "roc_auc", "run_augment_study"]
