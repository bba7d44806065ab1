"""Losses: next-token (AR) and block diffusion over x_t ⊕ x_0 with the LLaDA2.0 report's
Eq. 3 mask, mask-ratio bandwidth, complementary masking and the CAP confidence term."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from server.model.llada2_moe import Ling2MoeForward
from training.model import forward


def doc_positions(doc: torch.Tensor) -> torch.Tensor:
    """doc [B, L] (document id per token, non-decreasing) → position inside its document."""
    L = doc.shape[1]
    idx = torch.arange(L).expand_as(doc)
    start = torch.zeros_like(doc)
    start[:, 1:] = (doc[:, 1:] != doc[:, :-1]).long()
    start[:, 0] = 1
    first = torch.where(start.bool(), idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - first


def causal_mask(doc: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L]: causal and same document."""
    L = doc.shape[1]
    tri = torch.ones(L, L, dtype=torch.bool).tril()
    return (tri & (doc[:, :, None] == doc[:, None, :])).unsqueeze(1)


def bd_mask(doc: torch.Tensor, block: int, noisy_from: int = 0) -> torch.Tensor:
    """[B, 1, N+L, N+L] over x_t[noisy_from:] ⊕ x_0 (Eq. 3), N = L - noisy_from: noisy block b
    sees noisy block b (bidirectional, M_BD) and clean blocks < b (M_OBC); clean block b sees
    clean blocks ≤ b (M_BC); clean never sees noisy. Document-level: same document only.
    Noisy blocks before `noisy_from` (no masked token) are left out: nothing attends to them."""
    L = doc.shape[1]
    bc = torch.arange(L) // block  # clean blocks
    bn = bc[noisy_from:]  # noisy blocks
    N = L - noisy_from
    top = torch.cat([bn[:, None] == bn[None, :], bc[None, :] < bn[:, None]], dim=1)
    bottom = torch.cat([torch.zeros(L, N, dtype=torch.bool), bc[None, :] <= bc[:, None]], dim=1)
    m = torch.cat([top, bottom], dim=0)  # [N+L, N+L]
    d2 = torch.cat([doc[:, noisy_from:], doc], dim=1)
    return (m & (d2[:, :, None] == d2[:, None, :])).unsqueeze(1)


def ar_loss(model: Ling2MoeForward, ids: torch.Tensor, doc: torch.Tensor,
            weight: torch.Tensor) -> torch.Tensor:
    """Next-token CE; weight [B, L] marks targets (token t+1 scored at t when weight[t+1])."""
    h = forward(model, ids, doc_positions(doc), causal_mask(doc))  # [B, L, H]
    w = weight[:, 1:] & (doc[:, 1:] == doc[:, :-1])
    logits = model.compute_logits(h[:, :-1][w]).float()  # [N, V]
    return F.cross_entropy(logits, ids[:, 1:][w])


@dataclass
class DiffusionStats:
    loss: torch.Tensor  # what is optimised
    ce: torch.Tensor  # the ELBO-weighted masked CE (comparable across runs)
    conf: torch.Tensor  # CAP entropy term (0 when λ = 0)


def sample_masks(maskable: torch.Tensor, block: int, lo: float, hi: float,
                 g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask ratio t ~ U[lo, hi] per (row, block) → (mask [B, L] bool, t per token [B, L])."""
    B, L = maskable.shape
    nb = -(-L // block)
    t = lo + (hi - lo) * torch.rand(B, nb, generator=g)
    t_tok = t.repeat_interleave(block, dim=1)[:, :L]  # [B, L]
    mask = (torch.rand(B, L, generator=g) < t_tok) & maskable
    return mask, t_tok


def diffusion_loss(model: Ling2MoeForward, x0: torch.Tensor, doc: torch.Tensor,
                   mask: torch.Tensor, t: torch.Tensor, mask_id: int, block: int,
                   maskable: torch.Tensor, cap_lambda: float = 0.0, noise_std: float = 0.0,
                   g: torch.Generator | None = None) -> DiffusionStats:
    """Block-diffusion ELBO over x_t ⊕ x_0: CE on masked x_t positions weighted by 1/t,
    normalised by the number of maskable tokens; plus λ·entropy on masked positions whose
    argmax is already correct (CAP). `noise_std` > 0 adds N(0, σ²) to masked embeddings."""
    B, L = x0.shape
    rows_any = maskable.any(0).nonzero()
    first = int(rows_any[0]) if len(rows_any) else 0
    start = first - first % block  # first noisy block holding a maskable token
    xt = torch.where(mask, torch.full_like(x0, mask_id), x0)[:, start:]
    ids = torch.cat([xt, x0], dim=1)  # [B, N+L]
    pos = doc_positions(doc)
    noise = None
    if noise_std > 0:
        H = model.cfg.hidden_size
        n = torch.randn(B, ids.shape[1], H, generator=g) * noise_std
        noise = n * torch.cat([mask[:, start:], torch.zeros_like(mask)], dim=1).unsqueeze(-1)
    h = forward(model, ids, torch.cat([pos[:, start:], pos], dim=1),
                bd_mask(doc, block, start), noise)
    logits = model.compute_logits(h[:, : L - start][mask[:, start:]]).float()  # [N, V]
    target = x0[mask]
    ce_tok = F.cross_entropy(logits, target, reduction="none")  # [N]
    denom = max(int(maskable.sum()), 1)
    ce = (ce_tok / t[mask]).sum() / denom
    conf = torch.zeros(())
    if cap_lambda > 0:
        right = logits.argmax(-1) == target
        if right.any():
            logp = logits[right].log_softmax(-1)
            conf = -(logp.exp() * logp).sum(-1).mean()
    return DiffusionStats(ce + cap_lambda * conf, ce.detach(), conf.detach())


def complementary(mask: torch.Tensor, maskable: torch.Tensor, t: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The complementary copy: every maskable token masked in exactly one of the two."""
    return maskable & ~mask, (1.0 - t).clamp(min=0.05)
