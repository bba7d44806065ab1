"""Training the shipped model pair: `python -m training run` (see training/README.md)."""
