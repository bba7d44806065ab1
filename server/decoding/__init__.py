"""Decoding modes: how a step's logits become committed tokens (block diffusion, AR)."""
