"""unmask's compute kernels (imported as `unmask_kernels`; see pyproject.toml for why).

Each op has a torch reference; faster backends register beside it and are chosen once at
start-up by `select()`. Nothing here imports Triton or CUDA libraries at import time.
"""

from __future__ import annotations

from .acceptance.ref import EditBatch, SamplingBatch, accept_blocks, commit_chosen

__all__ = ["EditBatch", "SamplingBatch", "accept_blocks", "commit_chosen"]
