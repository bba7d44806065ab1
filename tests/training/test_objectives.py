"""The block-diffusion training mask (Eq. 3), complementary masking and the export names."""

from __future__ import annotations

import torch

from server.tiny.generate import model_config
from server.tiny.weights import random_state_dict
from training.model import build, hf_tensors, training_config
from training.objectives import bd_mask, complementary, doc_positions, sample_masks


def test_bd_mask_blocks_of_noisy_and_clean_halves() -> None:
    doc = torch.zeros(1, 4, dtype=torch.long)
    m = bd_mask(doc, block=2)[0, 0]  # [8, 8]: x_t (0..3) ⊕ x_0 (4..7)
    noisy_noisy, noisy_clean = m[:4, :4], m[:4, 4:]
    clean_noisy, clean_clean = m[4:, :4], m[4:, 4:]
    blocks = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]).bool()
    assert torch.equal(noisy_noisy, blocks)  # bidirectional inside its own block only
    assert torch.equal(noisy_clean, torch.tensor([[0, 0, 0, 0]] * 2 + [[1, 1, 0, 0]] * 2).bool())
    assert not clean_noisy.any()
    assert torch.equal(clean_clean, torch.tensor([[1, 1, 0, 0]] * 2 + [[1, 1, 1, 1]] * 2).bool())


def test_bd_mask_crop_and_documents() -> None:
    doc = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    full, crop = bd_mask(doc, 2)[0, 0], bd_mask(doc, 2, noisy_from=4)[0, 0]
    assert torch.equal(crop, full[4:, 4:])  # leaving out leading noisy blocks changes nothing
    assert not full[8 + 3, 8 + 2]  # clean token of doc 1 never sees doc 0
    assert torch.equal(doc_positions(doc), torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]]))


def test_complementary_masks_cover_every_maskable_token_once() -> None:
    maskable = torch.ones(3, 64, dtype=torch.bool)
    maskable[:, :10] = False
    m, t = sample_masks(maskable, 16, 0.2, 0.9, torch.Generator().manual_seed(0))
    mc, tc = complementary(m, maskable, t)
    assert torch.equal(m ^ mc, maskable) and not (m & mc).any()
    assert ((t >= 0.2) & (t <= 0.9)).all() and torch.allclose(tc, (1 - t).clamp(min=0.05))


def test_export_names_and_shapes_match_the_checkpoint_format() -> None:
    shape = dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_experts=4,
                 num_experts_per_tok=2, n_group=1, topk_group=1, num_shared_experts=1,
                 num_hidden_layers=2)
    cfg = training_config("llada2", 128, 1, shape)
    ours = hf_tensors(build(cfg, 0), torch.float32)
    ref = random_state_dict(model_config("llada2", 128, 1, overrides=shape), 0)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in ref.items()}
