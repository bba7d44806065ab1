"""Logits parity: the engine model on a full sequence with an explicit block-causal mask equals
(1) the independent reference model and (2) the paged, cached computation, in float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.core import Batch, GenerateRequest, SamplingParams, Segment, Sequence
from server.kv_cache.tensors import KVCache
from server.model.config import ModelConfig
from server.model.loader import load_model
from server.runner.attention import TorchAttention
from server.runner.model_runner import ModelRunner
from tests.reference.decode import block_causal_visible
from tests.reference.model import load_reference

B = 32


def make_runner(model_dir: Path, num_pages: int = 64, attn_block: int = B) -> ModelRunner:
    cfg = ModelConfig.from_file(model_dir / "config.json")
    model = load_model(model_dir, cfg, torch.float32, torch.device("cpu"))
    kv = KVCache(cfg.num_hidden_layers, num_pages, B, cfg.num_key_value_heads, cfg.head_dim,
                 torch.float32, torch.device("cpu"))
    return ModelRunner(model, kv, TorchAttention(), attn_block, torch.device("cpu"))


def canvas(ids: list[int], pages: list[int]) -> Sequence:
    seq = Sequence(req=GenerateRequest("x", tuple(ids), SamplingParams()), tokens=list(ids),
                   block=None, block_start=len(ids))
    seq.page_table = pages
    return seq


def seg(seq: Sequence, start: int, end: int, logits_from: int | None) -> Segment:
    return Segment(seq, start, end, logits_from, cache_end=end)


def random_ids(model_dir: Path, n: int, seed: int) -> list[int]:
    vocab = ModelConfig.from_file(model_dir / "config.json").vocab_size
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("n", [1, 31, 32, 33, 100, 160])
def test_engine_model_matches_reference_model(tiny_llada2: Path, n: int) -> None:
    ids = random_ids(tiny_llada2, n, seed=n)
    runner = make_runner(tiny_llada2)
    seq = canvas(ids, list(range(-(-n // B))))
    ours = runner.forward(Batch([seg(seq, 0, n, 0)], n))  # [n, V]
    ref = load_reference(tiny_llada2).forward(torch.tensor(ids), block_causal_visible(n, B))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [32, 64, 160])
def test_block_routed_model_matches_reference_model(tiny_llada22: Path, n: int) -> None:
    """LLaDA2.2: the engine's block-routed MoE equals the reference's per-block loop."""
    ids = random_ids(tiny_llada22, n, seed=n)
    runner = make_runner(tiny_llada22)
    assert runner.model.cfg.block_routing
    seq = canvas(ids, list(range(n // B)))
    ours = runner.forward(Batch([seg(seq, 0, n, 0)], n))
    ref = load_reference(tiny_llada22).forward(torch.tensor(ids), block_causal_visible(n, B))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_block_routing_changes_logits(tiny_llada22: Path) -> None:
    """The same weights routed per token (expert_capacity 0) give other logits: block routing
    matters, and the parity above is not per-token routing in disguise."""
    n = 64
    ids = random_ids(tiny_llada22, n, seed=5)
    blocked = make_runner(tiny_llada22)
    cfg = ModelConfig.from_file(tiny_llada22 / "config.json", {"expert_capacity": 0})
    per_token = ModelRunner(load_model(tiny_llada22, cfg, torch.float32, torch.device("cpu")),
                            blocked.kv, TorchAttention(), B, torch.device("cpu"))
    seq = canvas(ids, [0, 1])
    a = blocked.forward(Batch([seg(seq, 0, n, 0)], n))
    b = per_token.forward(Batch([seg(seq, 0, n, 0)], n))
    assert (a - b).abs().max() > 1e-2
    assert (a.argmax(-1) != b.argmax(-1)).any()


@pytest.mark.parametrize("model", ["tiny_llada2", "tiny_llada22"])
def test_paged_steps_match_full_sequence(model: str, request: pytest.FixtureRequest) -> None:
    """Prefill in chunks, then block by block against cached pages, two sequences batched
    (block routing: each block's experts depend on that block only, so KV reuse is exact)."""
    model_dir: Path = request.getfixturevalue(model)
    runner = make_runner(model_dir)
    a_ids, b_ids = random_ids(model_dir, 160, 1), random_ids(model_dir, 96, 2)
    a, b = canvas(a_ids, [0, 1, 2, 3, 4]), canvas(b_ids, [10, 11, 12])
    full_a = runner.forward(Batch([seg(a, 0, 160, 0)], 160))
    full_b = runner.forward(Batch([seg(b, 0, 96, 0)], 96))
    runner.kv.k.zero_(), runner.kv.v.zero_()
    # step 1: a prefills two blocks (no logits); b prefills one block and denoises the next
    out1 = runner.forward(Batch([seg(a, 0, 64, None), seg(b, 0, 64, 32)], 128))
    torch.testing.assert_close(out1, full_b[32:64], rtol=1e-5, atol=1e-5)
    # step 2: a's next two blocks as one extend (commit block + active block); b's last block
    out2 = runner.forward(Batch([seg(a, 64, 128, 96), seg(b, 64, 96, 64)], 96))
    torch.testing.assert_close(out2[:32], full_a[96:128], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out2[32:], full_b[64:96], rtol=1e-5, atol=1e-5)
    # step 3: a's last block alone, against four cached pages
    out3 = runner.forward(Batch([seg(a, 128, 160, 128)], 32))
    torch.testing.assert_close(out3, full_a[128:160], rtol=1e-5, atol=1e-5)


def test_causal_mode_matches_reference(tiny_ling2: Path) -> None:
    ids = random_ids(tiny_ling2, 70, 3)
    runner = make_runner(tiny_ling2, attn_block=1)
    seq = canvas(ids, [0, 1, 2])
    ours = runner.forward(Batch([seg(seq, 0, 70, 0)], 70))
    ref = load_reference(tiny_ling2).forward(torch.tensor(ids), block_causal_visible(70, 1))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    runner.kv.k.zero_(), runner.kv.v.zero_()  # token by token after a prefill of 50
    runner.forward(Batch([seg(seq, 0, 50, None)], 50))
    for p in range(50, 70):
        step = runner.forward(Batch([seg(seq, p, p + 1, p)], 1))
        torch.testing.assert_close(step[0], ref[p], rtol=1e-5, atol=1e-5)
