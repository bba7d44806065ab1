"""The embedded default model pair, trained in this repo (training/README.md) and shipped in the
wheel: `LLADA2` is what `unmask serve` serves with no model argument, `LING2` its AR twin."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
LLADA2 = HERE / "llada2"
LING2 = HERE / "ling2"
