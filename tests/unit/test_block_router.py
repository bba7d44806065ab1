"""LLaDA2.2 block-routed MoE (llada2x-decoding §3.5) and its config detection: the engine's
`Router` against the plain per-block reference, both experts backends, and the engine on a
tiny 2.2 checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

from server.model.config import ModelConfig, ModelConfigError
from server.model.moe import Router
from server.tiny.generate import model_config
from tests.reference.model import ReferenceModel

B = 32
EDIT = (5, 6)  # delete, split: any ordinary ids of the tiny vocabulary


def config(capacity: int, experts: int = 8, top_k: int = 2, **over: object) -> dict:
    return model_config("llada2.2", 256, 0, edit_ids=EDIT, overrides=dict(
        expert_capacity=capacity, num_experts=experts, num_experts_per_tok=top_k, **over))


def router_and_reference(cfg: dict, seed: int) -> tuple[Router, ReferenceModel]:
    g = torch.Generator().manual_seed(seed)
    router = Router(ModelConfig.from_dict(cfg))
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=g) * 0.3)
        router.expert_bias.copy_(0.1 * torch.randn(router.expert_bias.shape, generator=g))
    ref = ReferenceModel(cfg, {"model.layers.1.mlp.gate.weight": router.weight.detach(),
                               "model.layers.1.mlp.gate.expert_bias": router.expert_bias})
    return router, ref


def by_expert(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows in expert order (top-k order is not part of the contract)."""
    order = ids.argsort(-1)
    return ids.gather(1, order), weights.gather(1, order)


@pytest.mark.parametrize("blocks", [1, 2, 5])
@pytest.mark.parametrize(("experts", "top_k", "capacity"),
                         [(8, 2, 2), (8, 2, 3), (8, 2, 8), (16, 4, 6)])
def test_router_matches_reference(blocks: int, experts: int, top_k: int,
                                  capacity: int) -> None:
    cfg = config(capacity, experts, top_k)
    router, ref = router_and_reference(cfg, seed=blocks * 100 + capacity)
    x = torch.randn(blocks * B, cfg["hidden_size"],
                    generator=torch.Generator().manual_seed(blocks + experts))
    ids, weights = router(x)
    ref_ids, ref_weights = ref.route(1, x)
    ids, weights = by_expert(ids, weights)
    ref_ids, ref_weights = by_expert(ref_ids, ref_weights)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-6, atol=1e-6)
    for b in range(blocks):  # a block touches at most `capacity` experts
        assert ids[b * B:(b + 1) * B].unique().numel() <= capacity
    if capacity == experts:  # everything admitted: plain top-k of the biased score, no groups
        x32 = x.float() @ router.weight.t()
        plain = (x32.sigmoid() + router.expert_bias).topk(top_k, dim=-1).indices.sort(-1).values
        assert torch.equal(ids, plain)


def test_block_routing_differs_from_per_token_routing() -> None:
    router, _ = router_and_reference(config(2), seed=7)
    per_token = Router(ModelConfig.from_dict(config(0)))
    per_token.load_state_dict(router.state_dict())
    x = torch.randn(2 * B, 64, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(by_expert(*router(x))[0], by_expert(*per_token(x))[0])


def test_capacity_zero_is_per_token_grouped_routing() -> None:
    """expert_capacity 0: the 2.0/2.1 router (group-limited), any token count."""
    cfg = config(0)
    router, ref = router_and_reference(cfg, seed=3)
    x = torch.randn(37, 64, generator=torch.Generator().manual_seed(2))
    ids, weights = by_expert(*router(x))
    ref_ids, ref_weights = by_expert(*ref.route(1, x))
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-6, atol=1e-6)


def test_partial_block_is_refused() -> None:
    router, _ = router_and_reference(config(4), seed=0)
    with pytest.raises(AssertionError, match="whole 32-token blocks; this forward has 33"):
        router(torch.randn(33, 64))


def test_route_block_from_config_block_size() -> None:
    router, ref = router_and_reference(config(3, block_size=8), seed=5)
    assert router.block == 8
    x = torch.randn(24, 64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(by_expert(*router(x))[0], by_expert(*ref.route(1, x))[0])


# -- config detection -------------------------------------------------------------------------

def test_config_fields_and_flags() -> None:
    mc = ModelConfig.from_dict(config(4))
    assert (mc.expert_capacity, mc.route_block, mc.delete_token_id, mc.split_token_id) == (
        4, 32, *EDIT)
    assert mc.block_routing and mc.levenshtein
    old = ModelConfig.from_dict(model_config("llada2", 256, 0))
    assert (old.expert_capacity, old.delete_token_id, old.split_token_id) == (0, None, None)
    assert not old.block_routing and not old.levenshtein
    # edit ids without block routing: Levenshtein editing with per-token routing
    plain = ModelConfig.from_dict(config(0))
    assert plain.levenshtein and not plain.block_routing


@pytest.mark.parametrize(("change", "message"), [
    ({"delete_token_id": None, "split_token_id": None},
     "expert_capacity 4 .*must name delete_token_id and split_token_id"),
    ({"split_token_id": None}, "split_token_id missing"),
    ({"delete_token_id": 256}, "delete_token_id 256 must be a token id below vocab_size"),
    ({"split_token_id": EDIT[0]}, "must differ"),
    ({"expert_capacity": 1}, "expert_capacity 1 must be between num_experts_per_tok 2"),
    ({"expert_capacity": 9}, "and num_experts 8"),
    ({"architectures": ["BailingMoeV2ForCausalLM"]}, "need a block-diffusion architecture"),
])
def test_bad_llada22_configs_are_refused(change: dict, message: str) -> None:
    d = config(4)
    for k, v in change.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    with pytest.raises(ModelConfigError, match=message):
        ModelConfig.from_dict(d)


def test_startup_plan(tiny_llada22: Path) -> None:
    from server.engine.llm import engine_config
    from server.startup import plan_startup

    plan = plan_startup(engine_config(str(tiny_llada22), device="cpu", num_pages=64))
    mc = plan.mcfg
    assert plan.block_size == 32 and mc.block_routing and mc.levenshtein
    sp = plan.specials
    assert (sp.delete_id, sp.split_id) == (mc.delete_token_id, mc.split_token_id)
    assert len(sp.eos_ids) == 2 and sp.mask_id not in (sp.delete_id, sp.split_id)
    assert plan_startup(engine_config(str(tiny_llada22), device="cpu", num_pages=64,
                                      block_size=64)).block_size == 64
    with pytest.raises(ValueError, match="--block-size 16 must be a multiple of the "
                                         "checkpoint's block_size 32"):
        plan_startup(engine_config(str(tiny_llada22), device="cpu", num_pages=64,
                                   block_size=16))


# -- the model, both experts backends, and the engine ---------------------------------------

def test_grouped_gemm_backend_matches_reference(tiny_llada22: Path) -> None:
    """The Triton grouped GEMM (interpreted off CUDA) runs block-routed ids: the model's
    logits equal the reference model's."""
    pytest.importorskip("triton")
    from server.model.loader import load_model
    from tests.reference.decode import block_causal_visible
    from tests.reference.model import load_reference
    from unmask_kernels.moe.triton_moe import grouped_experts

    cfg = ModelConfig.from_file(tiny_llada22 / "config.json")
    model = load_model(tiny_llada22, cfg, torch.float32, torch.device("cpu"),
                       experts=grouped_experts)
    n = 2 * B
    ids = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(0))
    visible = block_causal_visible(n, B)

    class Full:  # one sequence, attention over itself with the block-causal mask
        def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor) -> torch.Tensor:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                attn_mask=visible).transpose(0, 1)

    with torch.inference_mode():
        ours = model.compute_logits(model(ids, torch.arange(n), Full()))
    ref = load_reference(tiny_llada22).forward(ids, visible)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_expert_parallel_ranks_sum_to_the_block_routed_moe() -> None:
    """Under expert parallelism every rank's replicated router makes the same block-routed
    choice: the ranks' partial outputs sum to the single-rank MoE."""
    from server.model.expert_parallel import ExpertParallelMoE
    from server.model.moe import SparseMoE
    from server.model.parallel import TPGroup

    cfg = ModelConfig.from_dict(config(3))
    torch.manual_seed(0)
    full = SparseMoE(cfg)
    with torch.no_grad():
        for t in full.parameters():
            t.copy_(torch.randn(t.shape) * t.shape[-1] ** -0.5)
        full.gate.expert_bias.copy_(0.1 * torch.randn(cfg.num_experts))
    x = torch.randn(2 * B, cfg.hidden_size)
    shared = full.shared_experts
    assert shared is not None
    gate, up = shared.gate_up_proj.weight.split(shared.inter)  # [I, H] each
    parts = []
    for rank in range(2):
        ep = ExpertParallelMoE(cfg, TPGroup(rank=rank, size=2), full.experts.impl)
        n, half = ep.num_local, slice(rank * shared.inter // 2, (rank + 1) * shared.inter // 2)
        ep.load_state_dict({
            "gate.weight": full.gate.weight, "gate.expert_bias": full.gate.expert_bias,
            "experts.w13": full.experts.w13[rank * n:(rank + 1) * n],
            "experts.w2": full.experts.w2[rank * n:(rank + 1) * n],
            "shared_experts.gate_up_proj.weight": torch.cat([gate[half], up[half]]),
            "shared_experts.down_proj.weight": shared.down_proj.weight[:, half]})
        with torch.no_grad():
            parts.append(ep(x))
    with torch.no_grad():
        torch.testing.assert_close(parts[0] + parts[1], full(x), rtol=1e-5, atol=1e-5)


def test_engine_generates_on_a_llada22_checkpoint(tiny_llada22: Path) -> None:
    """The engine runs a 2.2 checkpoint: prompts of any length (the tail travels in the
    active block), chunked prefill of whole blocks, two sequences per forward."""
    from server import LLM, SamplingParams

    with LLM(str(tiny_llada22), device="cpu", num_pages=64, max_num_batched_tokens=64) as llm:
        prompts = ["hello " * 3, "a longer prompt that spans more than one block " * 2]
        outs = llm.generate(prompts, SamplingParams(max_tokens=40, ignore_eos=True))
    assert [len(o.token_ids) for o in outs] == [40, 40]
