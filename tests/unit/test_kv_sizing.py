"""The KV pool from a memory profile (`--gpu-memory-utilization`, vLLM's meaning): what the
weights, the profiled step peak and the CUDA graph reserve leave; refused, naming the flags,
when one request of the context length does not fit; the flag is checked at planning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from server.engine.llm import engine_config
from server.kv_cache.sizing import MemoryProfile, check_room, pool_pages
from server.startup import plan_startup

GIB = 1 << 30
PROFILE = MemoryProfile(total=80 * GIB, in_use=34 * GIB, peak_step=3 * GIB,
                        graph_reserve=2 * GIB)


def test_pool_gets_what_the_profile_leaves(caplog: pytest.LogCaptureFixture) -> None:
    page = 2 * 20 * 32 * 4 * 128 * 2  # 20 layers, 32 positions, 4 KV heads, hd 128, bf16
    with caplog.at_level(logging.INFO):
        pages = pool_pages(PROFILE, 0.9, page)
    check_room(pages, PROFILE, 0.9, page, 32, 16384)  # room for one request: no error
    assert pages == int(80 * GIB * 0.9 - 39 * GIB) // page
    assert "profiled step peak 3.00 GiB" in caplog.text and f"KV pool {pages} pages" in caplog.text


def test_no_room_for_one_request_is_refused() -> None:
    page = 64 * (1 << 20)
    pages = pool_pages(PROFILE, 0.5, page)  # 80 GiB x 0.5 - 39 GiB: 1 GiB, 16 pages
    assert pages == 16
    with pytest.raises(ValueError, match="one request of the context length 16384") as e:
        check_room(pages, PROFILE, 0.5, page, 32, 16384)  # needs 512 pages
    for flag in ("--gpu-memory-utilization 0.5", "--max-model-len", "peak (3.00 GiB)"):
        assert flag in str(e.value)
    check_room(pages, PROFILE, 0.5, page, 32, 32 * 16)  # exactly one request fits


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_utilization_out_of_range_is_refused(tiny_llada2: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="--gpu-memory-utilization must be in"):
        plan_startup(engine_config(str(tiny_llada2), gpu_memory_utilization=bad))
    with pytest.raises(ValueError, match="--gpu-memory-utilization must be in"):
        pool_pages(PROFILE, bad, 1 << 20)


@pytest.mark.parametrize("attention", ["torch", "paged"])
@pytest.mark.parametrize("arch", ["tiny_llada2", "tiny_ling2"])
def test_profile_steps_run_over_a_one_page_cache(arch: str, attention: str,
                                                 request: pytest.FixtureRequest) -> None:
    """The maximal steps the GPU memory profile runs (token budget beyond the context, every
    running request at the full context) are valid forwards over a one-page scratch cache."""
    from server import LLM
    from server.kv_cache.tensors import KVCache
    from server.runner.memory import _prefill, _step
    from server.runner.model_runner import ModelRunner

    llm = LLM(str(request.getfixturevalue(arch)), device="cpu", num_pages=8,
              attention_backend=attention, max_model_len=256)
    eager = llm.engine.runner
    assert isinstance(eager, ModelRunner)
    kv = eager.kv
    scratch = ModelRunner(eager.model, KVCache(kv.k.shape[0], 1, kv.page_size, kv.k.shape[2],
                                               kv.k.shape[3], kv.k.dtype, kv.k.device),
                          eager.backend, eager.attn_block, eager.device, never=eager.never)
    Bq, V = eager.attn_block, llm.engine.vocab_size
    budget = 640 // Bq * Bq  # more than the 256-position context: chunks of 256
    for fb, rows in ((_prefill(budget, 256, Bq, 96, scratch), 96),
                     (_step([Bq] * 3, [256] * 3, 3 * Bq, scratch), 3 * Bq)):
        assert int(fb.positions.max()) < 256
        logits = scratch.run(fb)
        assert isinstance(logits, torch.Tensor) and logits.shape == (rows, V)
