"""`Autoregressive`: one token per step for causal checkpoints (Ling-2.0)."""

from __future__ import annotations

from server.core import GenerateRequest, GreedyRows, Logits, Segment, Sequence
from server.decoding.logits import (
    in_working_dtype,
    plain_greedy,
    process_logits,
    record_logprobs,
    record_prompt_logprobs,
    row_sampling,
    sampling_batch,
    wants_prompt_logprobs,
)
from server.decoding.modes import Finish
from server.grammar.accept import accept_in_order
from server.transfer import read_later, upload


class Autoregressive:
    """One token per step at the last position; causal attention; pages fill one slot a step."""

    def __init__(self, page_size: int, eos_ids: frozenset[int] = frozenset()) -> None:
        self.eos_ids = eos_ids
        self.attn_block = 1
        self.page_size = page_size

    def new_sequence(self, req: GenerateRequest) -> Sequence:
        return Sequence(req=req, tokens=list(req.prompt_ids), block=None,
                        block_start=len(req.prompt_ids))

    def num_final(self, seq: Sequence) -> int:
        if wants_prompt_logprobs(seq):
            return 0  # the whole prompt is forwarded once, with logits (no prefix reuse)
        return len(seq.tokens) - 1  # the last token is forwarded to produce the next logits

    def segment(self, seq: Sequence) -> Segment:
        end = len(seq.tokens)
        first = seq.num_cached if wants_prompt_logprobs(seq) else end - 1
        return Segment(seq, seq.num_cached, end, logits_start=first, cache_end=end)

    def greedy_suffices(self, segments: list[Segment]) -> bool:
        return all(plain_greedy(s.seq) and not wants_prompt_logprobs(s.seq) for s in segments)

    def accept(self, segments: list[Segment], logits: Logits) -> Finish:
        """logits [rows, V]: one row per segment, or a whole prompt's for a sequence that
        wants prompt logprobs (its rows before the last predict prompt tokens 1..P-1)."""
        if isinstance(logits, GreedyRows):  # greedy_suffices: one row per segment
            greedy = read_later(logits.token)

            def finish_greedy() -> list[int]:
                for seg, t in zip(segments, greedy.wait(), strict=True):
                    seg.seq.tokens.append(t)
                return [1] * len(segments)
            return finish_greedy
        rows = [s.end - (s.logits_start if s.logits_start is not None else s.end - 1)
                for s in segments]
        if any(r > 1 for r in rows):
            last = upload(rows, None, logits.device).cumsum(0) - 1
            start = 0
            for seg, r in zip(segments, rows, strict=True):
                if r > 1:
                    record_prompt_logprobs(seg.seq, logits[start : start + r - 1])
                start += r
            logits = logits[last]  # [S, V]: the next-token rows
        seqs = [s.seq for s in segments]
        for s in seqs:
            if wants_prompt_logprobs(s) and s.prompt_len == 1:
                s.prompt_logprobs = [None]  # a one-token prompt has nothing to predict
        logits = in_working_dtype(seqs, logits)
        sampling = sampling_batch(seqs)
        process_logits(seqs, logits[:, None], [len(s.tokens) for s in seqs],
                       self.eos_ids)  # [S, 1, V] view: in place
        tokens = logits.argmax(-1)  # [S]
        for i, s in enumerate(seqs):
            if s.grammar is not None:  # one grammatical token (AR is in order by nature)
                ids = [0]
                accept_in_order(logits[i : i + 1], ids, 0, s.grammar, threshold=1.0,
                                min_commit=1, sampling=row_sampling(s))
                tokens[i] = ids[0]
                if s.grammar.terminated:
                    s.grammar = None
            elif sampling is not None and not s.params.greedy:
                from unmask_kernels.acceptance.ref import sample_rows

                tokens[i] = sample_rows(logits[i : i + 1], s.params.temperature,
                                        s.params.top_k, s.params.top_p, s.generator)[0][0]
        pending = read_later(tokens)

        def finish() -> list[int]:
            for seq, t in zip(seqs, pending.wait(), strict=True):
                seq.tokens.append(t)
            record_logprobs(seqs, logits[:, None], [[0]] * len(seqs), None)
            return [1] * len(seqs)
        return finish

    def output_ids(self, seq: Sequence) -> list[int]:
        return seq.tokens[seq.prompt_len:]

    def advance(self, seq: Sequence) -> bool:
        return False

    def release(self, seq: Sequence) -> None:
        return None

    def frame(self, seq: Sequence) -> None:
        return None
