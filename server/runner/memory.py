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
from server.kv_cache.tensors import KVCache
from server.runner.forward_batch import ForwardBatch
from server.runner.model_runner import ModelRunner


def profile_memory(runner: ModelRunner, max_tokens: int, max_running: int, block: int,
                   max_model_len: int, graphs: bool) -> MemoryProfile:
    """Run the maximal steps on `runner` (whose KV cache is a scratch one) and measure."""
    dev = runner.device
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(dev)
    base = torch.cuda.memory_allocated(dev)
    rows = min(max_tokens, max_running * block)  # logit rows of a full decode step
    steps = [_step([max_tokens], [max_tokens], rows, runner.kv, dev, runner.attn_block),
             _step([block] * max_running, [max_model_len] * max_running, rows, runner.kv, dev,
                   runner.attn_block)]
    layers = peak = 0
    for fb in steps:
        torch.cuda.reset_peak_memory_stats(dev)
        runner.hidden(fb)
        layers = max(layers, torch.cuda.max_memory_allocated(dev) - base)
        torch.cuda.reset_peak_memory_stats(dev)
        logits = runner.run(fb)
        assert isinstance(logits, torch.Tensor)
        logits.float().log_softmax(-1)  # rows that need processing or log-probabilities
        del logits
        peak = max(peak, torch.cuda.max_memory_allocated(dev) - base)
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    return MemoryProfile(total, total - free, peak, layers if graphs else 0)


def _step(q_lens: list[int], kv_lens: list[int], rows: int, kv: KVCache, dev: torch.device,
          attn_block: int) -> ForwardBatch:
    """Segments of `q_lens` query rows ending at `kv_lens`, every key in the scratch page."""
    ps = kv.page_size
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
