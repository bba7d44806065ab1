"""Measuring what a GPU step needs before the KV pool exists (the pool's arithmetic is
`server/kv_cache/sizing.py`).

After the weights are loaded, the maximal steps run eagerly over a one-page scratch KV cache:
the token budget as one prefill chunk, and every running request's block at the full context.
The larger peak over the weights — activations, logits in the model dtype, their fp32 copy and
log-softmax for rows that need them — is kept free for serving, and the layers' share of it
again for the CUDA graphs' memory pool (the largest bucket's activations; the graphs are
captured once the pool exists, largest bucket first)."""

from __future__ import annotations

import torch

from server.kv_cache.sizing import MemoryProfile
from server.runner.forward_batch import ForwardBatch
from server.runner.model_runner import ModelRunner


def profile_memory(runner: ModelRunner, max_tokens: int, max_running: int, block: int,
                   max_model_len: int, graph_tokens: int | None) -> MemoryProfile:
    """Run the maximal steps on `runner` (whose KV cache is a scratch one) and measure.
    `graph_tokens`: rows of the largest CUDA graph (None: graphs off), whose layers' peak is
    reserved for the graph pool."""
    dev = runner.device
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(dev)
    base = torch.cuda.memory_allocated(dev)
    rows = min(max_tokens, max_running * block)  # logit rows of a full decode step
    steps = [_prefill(max_tokens, max_model_len, block, rows, runner),
             _step([block] * max_running, [max_model_len] * max_running, rows, runner)]
    peak = 0
    for fb in steps:
        torch.cuda.reset_peak_memory_stats(dev)
        logits = runner.run(fb)
        assert isinstance(logits, torch.Tensor)
        logits.float().log_softmax(-1)  # rows that need processing or log-probabilities
        del logits
        peak = max(peak, torch.cuda.max_memory_allocated(dev) - base)
    layers = 0
    if graph_tokens is not None:
        torch.cuda.reset_peak_memory_stats(dev)
        runner.hidden(_prefill(graph_tokens, max_model_len, block, 0, runner))
        layers = torch.cuda.max_memory_allocated(dev) - base
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    return MemoryProfile(total, total - free, peak, layers)


def _prefill(tokens: int, max_model_len: int, block: int, rows: int,
             runner: ModelRunner) -> ForwardBatch:
    """`tokens` of prefill as whole-block chunks of at most the context length, each from
    position 0 (positions stay inside the rotary table and the context)."""
    chunk = max_model_len // block * block
    q_lens = [chunk] * (tokens // chunk) + ([tokens % chunk] if tokens % chunk else [])
    return _step(q_lens, q_lens, rows, runner)


def _step(q_lens: list[int], kv_lens: list[int], rows: int, runner: ModelRunner
          ) -> ForwardBatch:
    """Segments of `q_lens` query rows ending at `kv_lens`, every key in the scratch page."""
    ps, dev, attn_block = runner.kv.page_size, runner.device, runner.attn_block
    T, S = sum(q_lens), len(q_lens)
    positions = torch.cat([torch.arange(e - q, e) for q, e in zip(q_lens, kv_lens, strict=True)])
    indptr = torch.tensor([0, *q_lens]).cumsum(0)
    max_pages = -(-max(kv_lens) // ps)
    return ForwardBatch(
        input_ids=torch.zeros(T, dtype=torch.long, device=dev),
        positions=positions.to(dev), slot_mapping=(positions % ps).to(dev),
        qo_indptr=indptr, q_start=torch.tensor([e - q for q, e in zip(q_lens, kv_lens,
                                                                       strict=True)]),
        kv_len=torch.tensor(kv_lens), page_table=torch.zeros(S, max_pages, dtype=torch.long,
                                                             device=dev),
        logits_indices=torch.arange(min(rows, T), device=dev), attn_block=attn_block,
        page_size=ps)
