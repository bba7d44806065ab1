"""Token tensors for each stage: packed pretraining rows with document ids, and SFT rows
(prompt | response | <|endoftext|> padding) with the response region marked."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from training.data import FUNCS, ChatExample, code_block
from training.tokenizer import ChatRenderer


@dataclass
class Packed:
    ids: torch.Tensor  # [N, L] long
    doc: torch.Tensor  # [N, L] long, document id (non-decreasing per row)


def pack(docs: list[list[int]], L: int) -> Packed:
    """Concatenate documents (each already ending in EOS) and cut into rows of L tokens."""
    ids, doc = [], []
    for i, d in enumerate(docs):
        ids.extend(d)
        doc.extend([i] * len(d))
    n = len(ids) // L
    return Packed(torch.tensor(ids[: n * L]).view(n, L), torch.tensor(doc[: n * L]).view(n, L))


def code_docs(repeat: int) -> list[str]:
    """The generated functions as plain source, so pretraining sees the SFT code style."""
    return [code_block(n, a, b) + "\n" for _ in range(repeat) for n, a, _, b, _ in FUNCS]


@dataclass
class SftRow:
    prompt: list[int]
    response: list[int]  # through <|role_end|>
    kind: str


def sft_rows(examples: list[ChatExample], r: ChatRenderer) -> list[SftRow]:
    out = []
    for ex in examples:
        p, resp = r.split_example(ex.messages, ex.tools)
        out.append(SftRow(p, resp, ex.kind))
    return out


@dataclass
class SftBatch:
    ids: torch.Tensor  # [B, L]
    doc: torch.Tensor  # [B, L] zeros: one conversation per row
    maskable: torch.Tensor  # [B, L] bool: response and padding (diffusion targets)
    ar_weight: torch.Tensor  # [B, L] bool: response tokens only (AR targets)


def sft_batch(rows: list[SftRow], eos: int, pad_to: int = 32) -> SftBatch:
    """Rows padded with EOS to a common multiple of `pad_to`, with at least one EOS each: the
    padding is maskable and loss-bearing for diffusion (it teaches the model to stop)."""
    need = max(len(r.prompt) + len(r.response) + 1 for r in rows)
    L = -(-need // pad_to) * pad_to
    ids = torch.full((len(rows), L), eos, dtype=torch.long)
    maskable = torch.zeros(len(rows), L, dtype=torch.bool)
    ar_w = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, r in enumerate(rows):
        p, n = len(r.prompt), len(r.prompt) + len(r.response)
        ids[i, :n] = torch.tensor(r.prompt + r.response)
        maskable[i, p:] = True
        ar_w[i, p:n] = True
    return SftBatch(ids, torch.zeros_like(ids), maskable, ar_w)


def sft_batches(rows: list[SftRow], batch: int, rng: random.Random) -> list[list[SftRow]]:
    """Length-sorted batches (little padding), in a shuffled order."""
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i].prompt) + len(rows[i].response),
                                                    rng.random()))
    groups = [[rows[i] for i in order[s : s + batch]] for s in range(0, len(order), batch)]
    rng.shuffle(groups)
    return groups
