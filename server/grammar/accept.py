"""In-order acceptance for a grammar-constrained diffusion block (docs/grammar.md).

A grammar reads left to right, so a constrained block commits only at its frontier: the first
undecided position, then the next, and so on, each token chosen from the logits masked by the
matcher state reached after the tokens before it. The walk goes on while tokens are above the
threshold; the first `min_commit` positions commit regardless (progress is guaranteed). Every
committed token has been accepted by the matcher, so the output is always a grammatical prefix,
and a stop token can only be chosen where the grammar is complete.

Fast path: if the unconstrained argmax is allowed it is also the masked argmax, and its
probability under the masked distribution is at least its unconstrained one; so when that is
already above the threshold no bitmask is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from server.core import GrammarCursor
from server.transfer import read


@dataclass(frozen=True, slots=True)
class RowSampling:
    temperature: float
    top_k: int
    top_p: float
    generator: torch.Generator | None


def accept_in_order(
    logits: torch.Tensor,  # [N, V] fp32, rows for block positions first..first+N; mask id -inf
    block: list[int],  # the block's ids, updated in place
    first: int,  # frontier: positions >= first are undecided, those before are final
    state: GrammarCursor,
    threshold: float,
    min_commit: int,
    sampling: RowSampling | None = None,
) -> int:
    """Commit a grammatical run at the frontier; returns how many positions were committed."""
    if sampling is None:
        best, argmax = logits.max(dim=-1)  # [N] each
        conf = torch.exp(best - torch.logsumexp(logits, dim=-1))  # [N]
        fast = read(torch.stack([argmax.float(), conf.float()], 1))  # one read: [N, 2]
        fast = [(int(t), c) for t, c in fast]
    n = 0
    for i in range(logits.shape[0]):
        must = n < min_commit
        if sampling is None:
            tok, c = fast[i]
            if state.accept(tok):
                if must or c > threshold:
                    block[first + i], n = tok, n + 1
                    if state.terminated:
                        break
                    continue
                state.rollback()
        tok, c = _choose(state.masked(logits[i]), sampling)
        if not (must or c > threshold):
            break
        if not state.accept(tok):  # only a token the bitmask allowed can be chosen
            raise RuntimeError(f"grammar rejected token {tok} that its bitmask allowed")
        block[first + i], n = tok, n + 1
        if state.terminated:
            break
    return n


def _choose(row: torch.Tensor, sampling: RowSampling | None) -> tuple[int, float]:
    """row [V] (masked) → (token, its probability under the masked distribution)."""
    if sampling is None:
        lse = torch.logsumexp(row, dim=-1)
        best, tok = row.max(dim=-1)
        return int(tok), float(torch.exp(best - lse))
    from unmask_kernels.acceptance.ref import sample_rows

    tok, prob = sample_rows(row[None], sampling.temperature, sampling.top_k, sampling.top_p,
                            sampling.generator)
    return int(tok[0]), float(prob[0])
