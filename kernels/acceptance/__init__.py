"""Confidence-threshold acceptance of denoised blocks."""
