"""unmask: an OpenAI-compatible serving engine for block-diffusion language models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.core import FinishReason, SamplingParams

if TYPE_CHECKING:
    from server.engine.llm import LLM, RequestOutput

__all__ = ["LLM", "FinishReason", "RequestOutput", "SamplingParams"]


def __getattr__(name: str) -> Any:  # lazy: `import server` stays light (no torch model code)
    if name in ("LLM", "RequestOutput"):
        from server.engine import llm

        return getattr(llm, name)
    raise AttributeError(name)
