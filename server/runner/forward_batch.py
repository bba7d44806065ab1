"""`ForwardBatch`: a scheduler `Batch` turned into the flat tensors one forward needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from server.core import Batch
from server.transfer import upload


@dataclass(slots=True)
class ForwardBatch:
    """Flat view of a step. Segment i owns query rows [qo_indptr[i], qo_indptr[i+1]) at absolute
    positions [q_start[i], kv_len[i]) and attends to key positions [0, kv_len[i]) of its own
    sequence, under a block-causal mask of granularity `attn_block` (1 = causal).
    Keys are read from the paged KV cache after this forward's own K/V are written."""

    input_ids: torch.Tensor  # [T] long
    positions: torch.Tensor  # [T] long
    slot_mapping: torch.Tensor  # [T] long: flat KV slot (page * page_size + offset) of each row
    qo_indptr: torch.Tensor  # [S+1] long (cpu)
    q_start: torch.Tensor  # [S] long (cpu): first position of each segment
    kv_len: torch.Tensor  # [S] long (cpu): one past the last key position of each segment
    page_table: torch.Tensor  # [S, max_pages] long: page ids, padded with 0
    logits_indices: torch.Tensor  # [R] long: rows whose logits the step needs
    attn_block: int
    page_size: int
    greedy: bool = False  # the step needs only `GreedyRows` of its logit rows (tensor parallel)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_segments(self) -> int:
        return self.q_start.shape[0]

    def to(self, device: torch.device) -> ForwardBatch:
        """The device tensors moved to `device`; the host-side ones (indptr, q_start, kv_len)
        stay on the CPU."""
        if device.type == "cpu":
            return self
        moved: dict[str, Any] = {f: upload(getattr(self, f), None, device)
                 for f in ("input_ids", "positions", "slot_mapping", "page_table",
                           "logits_indices")}
        return dataclasses.replace(self, **moved)


def build_forward_batch(
    batch: Batch, page_size: int, attn_block: int, device: torch.device, greedy: bool = False
) -> ForwardBatch:
    ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    logits_rows: list[int] = []
    indptr = [0]
    for seg in batch.segments:
        seq, row0 = seg.seq, len(ids)
        ids.extend(seq.ids(seg.start, seg.end))
        pages = seq.page_table
        for p in range(seg.start, seg.end):
            positions.append(p)
            slots.append(pages[p // page_size] * page_size + p % page_size)
        if seg.logits_start is not None:
            first = row0 + seg.logits_start - seg.start
            logits_rows.extend(range(first, row0 + seg.num_tokens))
        indptr.append(len(ids))
    max_pages = max((seg.end + page_size - 1) // page_size for seg in batch.segments)
    table = torch.zeros(len(batch.segments), max_pages, dtype=torch.long)
    for i, seg in enumerate(batch.segments):
        n = (seg.end + page_size - 1) // page_size
        table[i, :n] = torch.tensor(seg.seq.page_table[:n], dtype=torch.long)

    def dev(x: list[int]) -> torch.Tensor:
        return upload(x, torch.long, device)

    return ForwardBatch(
        input_ids=dev(ids),
        positions=dev(positions),
        slot_mapping=dev(slots),
        qo_indptr=torch.tensor(indptr, dtype=torch.long),
        q_start=torch.tensor([s.start for s in batch.segments], dtype=torch.long),
        kv_len=torch.tensor([s.end for s in batch.segments], dtype=torch.long),
        page_table=upload(table, None, device),
        logits_indices=dev(logits_rows),
        attn_block=attn_block,
        page_size=page_size,
        greedy=greedy,
    )
