"""What a step does with logit rows besides choosing tokens: the per-request logit processing
(`logit_bias`, the `min_tokens` ban), sampling parameters in batch form, and the
log-probabilities requests asked for; `plain_greedy` says when a row needs none of it."""

from __future__ import annotations

import torch

from server.core import Sequence, TokenLogprob
from server.grammar.accept import RowSampling
from server.transfer import read, upload
from unmask_kernels import SamplingBatch


def plain_greedy(seq: Sequence) -> bool:
    """Greedy with nothing that needs the logit rows themselves: no grammar, logit bias,
    min_tokens ban or log-probabilities (canvas confidences of greedy rows are the argmax's)."""
    p = seq.params
    return (p.greedy and seq.grammar is None and not p.logit_bias and not p.min_tokens
            and p.logprobs is None)


def in_working_dtype(seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
    """`logits` as they come (the model dtype) when every row goes straight into acceptance —
    the kernel reads any dtype and accumulates in fp32; an fp32 copy when some row edits them
    in place or samples from them (grammar masks, logit bias, min_tokens bans, temperature)."""
    if logits.dtype == torch.float32 or all(
            s.grammar is None and not s.params.logit_bias and not s.params.min_tokens
            and s.params.greedy for s in seqs):
        return logits
    return logits.float()


def row_sampling(seq: Sequence) -> RowSampling | None:
    p = seq.params
    return None if p.greedy else RowSampling(p.temperature, p.top_k, p.top_p, seq.generator)


def sampling_batch(seqs: list[Sequence]) -> SamplingBatch | None:
    if all(s.params.greedy for s in seqs):
        return None
    return SamplingBatch(
        temperature=[s.params.temperature for s in seqs],
        top_k=[s.params.top_k for s in seqs],
        top_p=[s.params.top_p for s in seqs],
        generators=[s.generator for s in seqs],
    )


def record_logprobs(seqs: list[Sequence], logits: torch.Tensor, written: list[list[int]],
                    mask_id: int | None) -> None:
    """For rows that asked for logprobs: the log-softmax of `logits` [S, N, V] (mask id
    excluded) at each written position (row i: offsets `written[i]` into its N rows), for the
    token now there, and its top alternatives, kept in `Sequence.logprob_at`.
    Only those rows pay: one log-softmax and top-k over their written positions."""
    want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None and written[i]]
    if not want:
        return
    dev = logits.device
    row = upload([i for i in want for _ in written[i]], None, dev)
    off = upload([o for i in want for o in written[i]], None, dev)
    lp = logits[row, off].float()  # [W, V]: written positions of requesting rows
    if mask_id is not None:
        lp[:, mask_id] = -torch.inf
    lp = lp.log_softmax(-1)
    toks = [seqs[i].token_at(o) for i in want for o in written[i]]
    chosen = lp.gather(1, upload(toks, None, dev)[:, None])[:, 0]  # [W]
    k = max(seqs[i].params.logprobs or 0 for i in want)
    top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())  # [W, k]
    host = read(torch.cat([chosen[:, None], top_v, top_i.to(lp.dtype)], 1))  # one read
    j = 0
    for i in want:
        seq, n = seqs[i], seqs[i].params.logprobs or 0
        for o in written[i]:
            vals = host[j]
            top = tuple((int(t), v) for t, v in zip(vals[1 + k : 1 + k + n], vals[1 : 1 + n],
                                                    strict=True))
            seq.logprob_at[seq.pos_of(o)] = TokenLogprob(toks[j], vals[0], top)
            j += 1


def process_logits(seqs: list[Sequence], logits: torch.Tensor, firsts: list[int],
                   stop_ids: frozenset[int]) -> None:
    """In place, before acceptance, for rows that ask: `logit_bias` added at every position;
    EOS and stop ids made impossible (−inf) at positions whose output index is below
    `min_tokens`. logits [S, N, V]; row i's offset o predicts absolute position firsts[i] + o."""
    for i, (seq, first) in enumerate(zip(seqs, firsts, strict=True)):
        p = seq.params
        if p.logit_bias:
            ids = upload([t for t, _ in p.logit_bias], None, logits.device)
            bias = upload([b for _, b in p.logit_bias], logits.dtype, logits.device)
            logits[i, :, ids] += bias
        if p.min_tokens:
            early = [o for o in range(logits.shape[1])
                     if first + o - seq.prompt_len < p.min_tokens]
            stops = sorted((set() if p.ignore_eos else stop_ids) | set(p.stop_token_ids))
            if early and stops:
                rows = upload(early, None, logits.device)
                logits[i, rows[:, None], upload(stops, None, logits.device)] = -torch.inf


PROMPT_LOGPROB_CHUNK = 1024  # rows of vocabulary-wide fp32 work at a time


def wants_prompt_logprobs(seq: Sequence) -> bool:
    return seq.params.prompt_logprobs is not None and seq.prompt_logprobs is None


def record_prompt_logprobs(seq: Sequence, logits: torch.Tensor) -> None:
    """logits [P-1, V]: row i is the next-token distribution after prompt token i."""
    n = seq.params.prompt_logprobs or 0
    ids = upload(seq.req.prompt_ids[1:], None, logits.device)
    host: list[list[float]] = []
    for lo in range(0, logits.shape[0], PROMPT_LOGPROB_CHUNK):  # bounded fp32 copies
        lp = logits[lo : lo + PROMPT_LOGPROB_CHUNK].float().log_softmax(-1)
        chosen = lp.gather(1, ids[lo : lo + PROMPT_LOGPROB_CHUNK, None])[:, 0]
        top_v, top_i = lp.topk(n, dim=-1) if n else (lp[:, :0], lp[:, :0].long())
        host += read(torch.cat([chosen[:, None], top_v, top_i.to(lp.dtype)], 1))
    entries: list[TokenLogprob | None] = [None]
    for t, vals in zip(seq.req.prompt_ids[1:], host, strict=True):
        top = tuple((int(i), v) for i, v in zip(vals[1 + n :], vals[1 : 1 + n], strict=True))
        entries.append(TokenLogprob(t, vals[0], top))
    seq.prompt_logprobs = entries


def record_canvas(seqs: list[Sequence], logits: torch.Tensor | None,
                  before: list[list[int] | None], mask_id: int,
                  greedy_conf: torch.Tensor | None = None) -> None:
    """For rows with `params.canvas`, after acceptance: the cells this step unmasked and
    rewrote (`Sequence.canvas_changes`), and each written token's probability under
    softmax(logits) with the mask id excluded (`Sequence.canvas_confidence`, per cell).
    logits [S, B, V], or for greedy rows `greedy_conf` [S, B] (the argmax's probability, which
    is the written token's); `before[i]`: row i's block at the top of the step. Only those rows
    pay: one softmax over the cells they wrote. A LLaDA2.2 row's cells may have moved (its
    scan's `sources`): a cell is compared with, and keeps the confidence of, its source."""
    rows: list[int] = []
    offsets: list[int] = []  # the written cell's logit row (its source)
    cells: list[int] = []  # where the token now is
    tokens: list[int] = []
    for i, (seq, old) in enumerate(zip(seqs, before, strict=True)):
        if not seq.params.canvas or old is None or seq.block is None:
            continue
        new, B = seq.block, len(seq.block)
        moved = seq.levenshtein.sources if seq.levenshtein is not None else None
        src: list[int | None] = list(moved) if moved is not None else list(range(B))
        kept = seq.canvas_confidence or [None] * B
        seq.canvas_confidence = [None if s is None else kept[s] for s in src]
        committed = tuple(o for o, s in enumerate(src)
                          if s is not None and old[s] == mask_id and new[o] != mask_id)
        edited = tuple(o for o, s in enumerate(src)
                       if s is not None and old[s] not in (mask_id, new[o]))
        seq.canvas_changes = (committed, edited)
        for o in (*committed, *edited):
            source = src[o]
            assert source is not None
            rows.append(i)
            offsets.append(source)
            cells.append(o)
            tokens.append(new[o])
    if not rows:
        return
    if greedy_conf is not None:
        probs = read(greedy_conf[rows, offsets])  # one read
    else:
        assert logits is not None
        dev = logits.device
        lp = logits[upload(rows, None, dev), upload(offsets, None, dev)].float()
        lp[:, mask_id] = -torch.inf  # [W, V]
        chosen = upload(tokens, None, dev)[:, None]
        probs = read(lp.log_softmax(-1).gather(1, chosen)[:, 0].exp())  # one read
    for i, o, p in zip(rows, cells, probs, strict=True):
        conf = seqs[i].canvas_confidence
        assert conf is not None
        conf[o] = p
