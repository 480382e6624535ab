"""Evaluation: segmentation and classification metrics, cross-validation reports, statistics."""
