"""The Ling-2.0 / LLaDA2 MoE decoder. One implementation serves `LLaDA2MoeModelLM` (block
diffusion) and `BailingMoeV2ForCausalLM` (AR): they differ only in the attention mask, which the
runner's `ForwardBatch` carries. Module names mirror the checkpoint's tensor names.
Under tensor parallelism (`tp.size > 1`) each rank holds its share of the heads (KV heads
replicated when tp > their count), MLP width, experts and vocabulary rows; attention and MLP
outputs are partial sums, all-reduced in `DecoderLayer`; the embedding is all-reduced and the
logits gathered to rank 0 (`compute_logits`)."""

from __future__ import annotations

import torch
from torch import nn

from server.core import GreedyRows
from server.model.config import ModelConfig
from server.model.expert_parallel import ExpertParallelMoE
from server.model.layers import Attend, RMSNorm, SwiGLU
from server.model.moe import ExpertsFn, SparseMoE
from server.model.parallel import (
    SINGLE,
    TPGroup,
    VocabParallelEmbedding,
    local_kv_heads,
    vocab_rows,
)
from server.model.rope import RotaryEmbedding
from unmask_kernels.moe.ref import experts_loop


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, tp: TPGroup = SINGLE) -> None:
        super().__init__()
        self.layer = layer
        # this rank's heads: whole Q heads and the KV heads they use: nkv / tp of them, or the
        # one (replicated) KV head when tp > nkv (check_tp_size, kv_head_range)
        self.nh, self.nkv = cfg.num_attention_heads // tp.size, local_kv_heads(cfg, tp.size)
        self.hd = cfg.head_dim
        # rows: [Q heads | K heads | V heads], each head hd contiguous rows (no interleaving)
        self.query_key_value = nn.Linear(
            cfg.hidden_size, (self.nh + 2 * self.nkv) * self.hd, bias=cfg.use_qkv_bias
        )
        self.use_qk_norm = cfg.use_qk_norm
        if cfg.use_qk_norm:
            self.query_layernorm = RMSNorm(self.hd, cfg.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.hd, cfg.rms_norm_eps)
        # row-parallel: partial sums over ranks, so the bias is added on rank 0 only
        self.dense = nn.Linear(self.nh * self.hd, cfg.hidden_size,
                               bias=cfg.use_bias and tp.rank == 0)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
                ctx: Attend) -> torch.Tensor:
        T = x.shape[0]
        qkv = self.query_key_value(x).view(T, self.nh + 2 * self.nkv, self.hd)
        q, k, v = qkv.split([self.nh, self.nkv, self.nkv], dim=1)  # [T, n*, hd]
        if self.use_qk_norm:  # per-head norm before RoPE
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = rope(positions, q, k)
        out = ctx.attend(self.layer, q, k, v.contiguous())  # [T, nh, hd]
        return self.dense(out.reshape(T, self.nh * self.hd))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, tp: TPGroup, experts: ExpertsFn) -> None:
        super().__init__()
        self.tp = tp
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg, layer, tp)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp: nn.Module
        if not cfg.is_moe_layer(layer):
            self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size // tp.size)
        elif tp.size == 1:
            self.mlp = SparseMoE(cfg, experts)
        else:
            self.mlp = ExpertParallelMoE(cfg, tp, experts)

    def forward(self, h: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
                ctx: Attend) -> torch.Tensor:
        h = h + self.tp.all_reduce(self.attention(self.input_layernorm(h), positions, rope, ctx))
        return h + self.tp.all_reduce(self.mlp(self.post_attention_layernorm(h)))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TPGroup, experts: ExpertsFn) -> None:
        super().__init__()
        # tp > 1: rows [rank·Vp, (rank+1)·Vp) only; the same parameter name `weight` either way
        self.word_embeddings: nn.Embedding | VocabParallelEmbedding = (
            nn.Embedding(cfg.vocab_size, cfg.hidden_size) if tp.size == 1
            else VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp))
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, tp, experts)
                                    for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Ling2MoeForward(nn.Module):
    """forward(ids, positions, ctx) → hidden [T, H]; compute_logits(hidden rows) → logits in
    the model dtype."""

    def __init__(self, cfg: ModelConfig, max_positions: int | None = None,
                 tp: TPGroup = SINGLE, experts: ExpertsFn = experts_loop) -> None:
        super().__init__()
        self.cfg, self.tp = cfg, tp
        self.model = Backbone(cfg, tp, experts)
        # vocabulary-parallel: rows [rank·Vp, (rank+1)·Vp) of the [V, H] head (Vp = V on one rank)
        self.lm_head = nn.Linear(cfg.hidden_size, vocab_rows(cfg.vocab_size, tp.size), bias=False)
        self.max_positions = max_positions or cfg.max_position_embeddings
        self.rope = RotaryEmbedding(cfg, self.max_positions)

    def reset_rope(self, device: torch.device) -> None:
        """(Re)compute the cos/sin tables on `device`: needed after building on the meta device."""
        self.rope = RotaryEmbedding(self.cfg, self.max_positions).to(device)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                ctx: Attend) -> torch.Tensor:
        h = self.model.word_embeddings(input_ids)  # [T, H]
        for layer in self.model.layers:
            h = layer(h, positions, self.rope, ctx)
        return h

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [R, H] pre-norm rows → logits [R, V] in the model dtype (final norm, then
        lm_head); consumers upcast where they need to (`decoding.logits.in_working_dtype`).

        Under tensor parallelism this is a collective (a gather to rank 0 over `tp.group`):
        every rank of the group must call it, with the same rows, as they all run the same
        forward. Rank 0 returns the full logits [R, V]; the other ranks return an empty
        [0, V] placeholder, which callers discard."""
        V = self.cfg.vocab_size
        local = self.lm_head(self.model.norm(hidden))  # [R, Vp]: vocab [rank·Vp, (rank+1)·Vp)
        if self.tp.size == 1:
            return local  # [R, V]
        if hidden.shape[0] == 0:  # the same R on every rank: all skip the gather together
            return local.new_empty((0, V))
        parts = self.tp.gather_to_first(local)  # rank 0: tp.size × [R, Vp]; others: None
        if parts is None:
            return local.new_empty((0, V))
        return torch.cat(parts, dim=1)[:, :V]  # [R, V]: the last shard's pad dropped

    def greedy_rows(self, hidden: torch.Tensor, never: int | None) -> GreedyRows | None:
        """hidden [R, H] pre-norm rows → what greedy acceptance needs of their logits, with
        token `never` (the mask id) left out of the vocabulary: per row the argmax, its logit
        and the log-sum-exp. Under tensor parallelism each rank reduces its own vocabulary
        slice and rank 0 gathers [R, 3] per rank instead of [R, Vp]: a collective like
        `compute_logits`; ranks other than 0 get None."""
        V = self.cfg.vocab_size
        assert V < 1 << 24  # token ids travel as fp32 in the gathered [R, 3]: exact below 2^24
        local = self.lm_head(self.model.norm(hidden)).float()  # [R, Vp]
        first = self.tp.rank * local.shape[1]  # vocabulary id of column 0
        local[:, max(0, V - first):] = -torch.inf  # the last shard's padding
        if never is not None and 0 <= never - first < local.shape[1]:
            local[:, never - first] = -torch.inf
        best, idx = local.max(-1)  # [R] each
        part = torch.stack([best, (idx + first).float(), local.logsumexp(-1)], 1)  # [R, 3]
        parts = self.tp.gather_to_first(part) if hidden.shape[0] else [part]
        if parts is None:
            return None
        every = torch.stack(parts)  # [N, R, 3]
        shard = every[..., 0].argmax(0)  # [R]: the first slice holding the row's maximum
        pick = every.gather(0, shard[None, :, None].expand(1, -1, 3))[0]  # [R, 3]
        return GreedyRows(pick[:, 1].long(), pick[:, 0], every[..., 2].logsumexp(0))
