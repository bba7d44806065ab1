"""Tiny random checkpoints in the real LLaDA2 / Ling-2.0 on-disk format."""

from server.tiny.generate import make_tiny_model

__all__ = ["make_tiny_model"]
