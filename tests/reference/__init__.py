"""Independent slow oracle: a float32 reference model and greedy reference decoders."""

from tests.reference.decode import (
    DecodeStats,
    block_causal_visible,
    reference_ar_greedy,
    reference_generate,
)
from tests.reference.model import ReferenceModel, load_reference

__all__ = ["DecodeStats", "ReferenceModel", "block_causal_visible", "load_reference",
           "reference_ar_greedy", "reference_generate"]
