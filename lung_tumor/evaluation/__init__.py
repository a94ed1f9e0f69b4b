"""Scoring segmentations per case in 3D, as the Medical Segmentation Decathlon and nnU-Net do."""

from lung_tumor.evaluation.lesions import label_lesions, lesion_detection
from lung_tumor.evaluation.metrics import case_metrics, slice_averaged_soft_dice, summarize_cases

__all__ = ["case_metrics", "label_lesions", "lesion_detection", "slice_averaged_soft_dice", "summarize_cases"]
