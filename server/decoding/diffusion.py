"""`BlockDiffusion`: LLaDA2 block-diffusion decoding (threshold acceptance, LLaDA2.1 token
editing, LLaDA2.2 Levenshtein rows) on the device-resident `CanvasTable`."""

from __future__ import annotations

from collections.abc import Callable

import torch

from server.config import SchedulerConfig
from server.core import (
    DEFAULT_MAX_POST_STEPS,
    EDITING_OFF,
    CanvasFrame,
    Editing,
    GenerateRequest,
    GreedyRows,
    LevenshteinState,
    Logits,
    Segment,
    Sequence,
)
from server.decoding import levenshtein
from server.decoding.canvas_table import CanvasTable
from server.decoding.levenshtein import EditIds
from server.decoding.logits import (
    in_working_dtype,
    plain_greedy,
    process_logits,
    record_canvas,
    record_logprobs,
    row_sampling,
    sampling_batch,
)
from server.decoding.modes import Finish
from server.grammar.accept import accept_in_order
from server.transfer import read_later, upload
from unmask_kernels import accept_blocks, commit_chosen

AcceptFn = Callable[..., torch.Tensor]  # `accept_blocks`' signature: committed [S, B] bool


def oracle_commits(tpf: float, step: int) -> int:
    """Tokens the acceptance oracle commits at a block's `step`: floor((n+1)r) - floor(nr),
    so every prefix of steps averages `tpf` (>= 1 per step for tpf >= 1)."""
    return max(1, int((step + 1) * tpf) - int(step * tpf))


class BlockDiffusion:
    """LLaDA2.0 threshold decoding, and per request LLaDA2.1 joint decoding with token editing
    (llada2x-decoding.md §1). An editing block is complete after an iteration that started
    mask-free and edited nothing (the reference's no-update end); once `max_post_steps`
    mask-free iterations have run, edits stop, so the next iteration settles it (the budget
    end, one forward later than the reference, same tokens). Either way the block's last
    forward had its final tokens as input: its KV is final and it is never re-forwarded."""

    def __init__(self, block_size: int, mask_id: int, threshold: float,
                 editing: Editing | None = None, eos_ids: frozenset[int] = frozenset(),
                 max_post_steps: int = DEFAULT_MAX_POST_STEPS,
                 accept_fn: AcceptFn = accept_blocks, simulate_tpf: float | None = None,
                 edit_ids: EditIds | None = None, table: CanvasTable | None = None) -> None:
        self.eos_ids = eos_ids
        self.max_post_steps = max_post_steps  # the default budget, also when editing is off
        self.attn_block = self.page_size = self.block_size = block_size
        self.mask_id = mask_id
        self.threshold = threshold
        self.editing = editing  # the default of requests that do not choose
        self.accept_fn = accept_fn  # the "acceptance" registry's choice
        self.simulate_tpf = simulate_tpf  # benchmarking oracle, see DiffusionConfig
        self.edit_ids = edit_ids  # LLaDA2.2: editing rows follow docs/llada22.md
        # the running sequences' blocks on the device (a CPU table of the default capacity
        # when the caller gives none)
        self.table = table or CanvasTable(SchedulerConfig().max_running_requests, block_size,
                                          mask_id, torch.device("cpu"))

    def new_sequence(self, req: GenerateRequest) -> Sequence:
        B, P = self.block_size, len(req.prompt_ids)
        start = P // B * B  # absolute grid: the prompt tail shares the first active block
        tail = list(req.prompt_ids[start:])
        editing = self.editing_of(req)
        return Sequence(req=req, tokens=list(req.prompt_ids[:start]),
                        block=tail + [self.mask_id] * (B - len(tail)), block_start=start,
                        editing=editing, levenshtein=LevenshteinState()
                        if editing is not None and self.edit_ids is not None else None)

    def editing_of(self, req: GenerateRequest) -> Editing | None:
        """The request's editing rule; ValueError for `max_post_steps` with editing off.
        Grammar-constrained requests commit in order at the matcher's frontier, so every
        generated position is consumed by the matcher: under the documented rule "no edits at
        consumed positions" they never edit, whatever they ask (docs/editing.md)."""
        p, default = req.params, self.editing
        t = p.editing_threshold
        if t is None:
            t = EDITING_OFF if default is None else default.threshold
        if t == EDITING_OFF:
            if p.max_post_steps is not None:
                raise ValueError("max_post_steps needs editing on (editing_threshold)")
            return None
        if req.grammar is not None:
            return None
        posts = p.max_post_steps if p.max_post_steps is not None else self.max_post_steps
        return Editing(float(t), posts)

    def num_final(self, seq: Sequence) -> int:
        return seq.block_start

    def segment(self, seq: Sequence) -> Segment:
        return Segment(seq, seq.num_cached, seq.block_start + self.block_size,
                       logits_start=seq.block_start, cache_end=seq.block_start)

    def undecided(self, seq: Sequence) -> list[bool]:
        frozen = max(0, seq.prompt_len - seq.block_start)  # prompt positions never change
        assert seq.block is not None
        return [i >= frozen and t == self.mask_id for i, t in enumerate(seq.block)]

    def greedy_suffices(self, segments: list[Segment]) -> bool:
        # LLaDA2.2 rows need the runner-up and the edit ids' logits (docs/llada22.md)
        return self.edit_ids is None and all(plain_greedy(s.seq) for s in segments)

    def accept(self, segments: list[Segment], logits: Logits) -> Finish:
        seqs = [s.seq for s in segments]
        S, B = len(seqs), self.block_size
        if isinstance(logits, GreedyRows):  # greedy_suffices: nothing below needs the rows
            conf = logits.confidence.view(S, B)
            before = [list(s.block) if s.params.canvas and s.block is not None else None
                      for s in seqs]
            greedy = self._accept_free(seqs, None, (logits.token.view(S, B), conf))

            def finish_greedy() -> list[int]:
                counts = greedy()
                record_canvas(seqs, None, before, self.mask_id, greedy_conf=conf)
                return counts
            return finish_greedy
        logits = in_working_dtype(seqs, logits.view(S, B, -1))
        before = [list(s.block) if (s.params.logprobs is not None or s.params.canvas)
                  and s.block is not None else None for s in seqs]
        process_logits(seqs, logits, [s.block_start for s in seqs], self.eos_ids)
        if self.edit_ids is not None:  # rows without Levenshtein editing never write edit ids
            plain = [i for i, s in enumerate(seqs) if s.levenshtein is None]
            if plain:
                cols = [self.edit_ids.delete, self.edit_ids.split]
                logits[upload(plain, None, logits.device)[:, None, None], :,
                       upload(cols, None, logits.device)] = -torch.inf
        rows = self._accept_rows(seqs, logits)

        def finish() -> list[int]:
            counts = rows()
            written = [[o for o, (a, b) in enumerate(zip(old, s.block, strict=True)) if a != b]
                       if old is not None and s.block is not None else []
                       for s, old in zip(seqs, before, strict=True)]
            record_logprobs(seqs, logits, written, self.mask_id)
            record_canvas(seqs, logits, before, self.mask_id)
            return counts
        return finish

    def _accept_rows(self, seqs: list[Sequence], logits: torch.Tensor) -> Finish:
        S = len(seqs)
        free = [i for i, s in enumerate(seqs) if s.grammar is None and s.levenshtein is None]
        if len(free) == S:  # no grammar or 2.2 editing in this step: the batched rule, untouched
            return self._accept_free(seqs, logits)
        counts = [0] * S
        free_rows = (self._accept_free([seqs[i] for i in free],
                                       logits[upload(free, None, logits.device)])
                     if free else None)
        lev = [i for i, s in enumerate(seqs) if s.levenshtein is not None]
        if lev:  # one pass and one host read for every LLaDA2.2 editing row
            assert self.edit_ids is not None
            rows = upload(lev, None, logits.device)
            for i, c in zip(lev, levenshtein.choose(logits[rows], self.edit_ids), strict=True):
                seq = seqs[i]
                assert seq.editing is not None
                counts[i] = levenshtein.iterate(seq, c, self.edit_ids, self._threshold(seq),
                                                seq.editing)
                seq.canvas_row_current = False  # the host rewrote the block
        for i, seq in enumerate(seqs):
            if seq.grammar is not None:
                counts[i] = self._accept_constrained(seq, logits[i])

        def finish() -> list[int]:
            if free_rows is not None:
                for i, n in zip(free, free_rows(), strict=True):
                    counts[i] = n
            return counts
        return finish

    def _accept_free(self, seqs: list[Sequence], logits: torch.Tensor | None,
                     chosen: tuple[torch.Tensor, torch.Tensor] | None = None) -> Finish:
        """logits [S, B, V], or the greedy (token, confidence) [S, B] each already `chosen`:
        confidence-threshold acceptance anywhere in each block, and the token-to-token edits
        of editing rows, on the device-resident canvases (`CanvasTable`); one host read."""
        B, table = self.block_size, self.table
        rows = table.bind(seqs, self._threshold)  # [S]
        step = table.gather(rows, any(s.editing is not None for s in seqs))
        threshold, min_commit = step.threshold, step.min_commit
        if self.simulate_tpf is not None:  # nothing passes 2.0: the k most confident commit
            threshold = torch.full_like(threshold, 2.0)
            min_commit = upload([oracle_commits(self.simulate_tpf, s.block_steps)
                                 for s in seqs], torch.long, rows.device)
        if chosen is not None:
            committed = commit_chosen(*chosen, table.canvas, step.undecided, threshold,
                                      min_commit, step.edits, rows)
        else:
            assert logits is not None
            committed = self.accept_fn(logits, table.canvas, step.undecided,
                                       threshold=threshold, min_commit=min_commit,
                                       mask_id=self.mask_id, sampling=sampling_batch(seqs),
                                       edits=step.edits, rows=rows)
        edited = torch.zeros_like(committed)
        if step.edits is not None:
            table.count_posts(step)
            edited = step.edits.edited
        pending = read_later(torch.cat([table.canvas[rows], committed.sum(1, keepdim=True),
                                        edited.sum(1, keepdim=True), step.posts[:, None]],
                                       dim=1))  # [S, B + 3]: the step's one read

        def finish() -> list[int]:
            counts = []
            for seq, r in zip(seqs, pending.wait(), strict=True):
                seq.block = r[:B]
                counts.append(r[B])
                if seq.editing is not None:
                    edits, posts = r[B + 1], r[B + 2]
                    seq.block_settled = posts > seq.post_steps and edits == 0  # no mask, no edit
                    seq.post_steps, seq.block_edits = posts, seq.block_edits + edits
            return counts
        return finish

    def release(self, seq: Sequence) -> None:
        self.table.release(seq)

    def generated(self, seq: Sequence) -> list[bool]:
        """Block positions past the prompt (the only ones an edit may touch)."""
        frozen = max(0, seq.prompt_len - seq.block_start)
        return [i >= frozen for i in range(self.block_size)]

    def _accept_constrained(self, seq: Sequence, logits: torch.Tensor) -> int:
        """logits [B, V]: in-order acceptance at the frontier under the sequence's grammar."""
        assert seq.block is not None and seq.grammar is not None
        undecided = self.undecided(seq)
        if True not in undecided:
            return 0
        first = undecided.index(True)  # constrained blocks commit left to right: a suffix
        logits[:, self.mask_id] = -torch.inf
        p = seq.params
        n = accept_in_order(logits[first:], seq.block, first, seq.grammar,
                            self._threshold(seq), p.min_commit, row_sampling(seq))
        seq.canvas_row_current = False  # the host rewrote the block
        if seq.grammar.terminated:
            seq.grammar = None  # complete: anything after its stop token is unconstrained
        return n

    def _threshold(self, seq: Sequence) -> float:
        t = seq.params.threshold
        return self.threshold if t is None else t

    def output_ids(self, seq: Sequence) -> list[int]:
        """Editing rows: completed blocks only (any active-block token may still change)."""
        assert seq.block is not None
        P = seq.prompt_len
        out = seq.tokens[P:]
        if seq.editing is not None:
            return out
        for t in seq.block[max(0, P - seq.block_start):]:
            if t == self.mask_id:
                break
            out.append(t)
        return out

    def advance(self, seq: Sequence) -> bool:
        assert seq.block is not None
        if seq.editing is not None:
            if not seq.block_settled:
                return False
            # its last forward's input was the final block: that KV is final (§1.6)
            seq.num_cached = seq.block_start + self.block_size
        elif any(self.undecided(seq)):
            return False
        if self.edit_ids is not None:  # docs/llada22.md: never in a completed block
            bad = {self.mask_id, self.edit_ids.delete, self.edit_ids.split}
            assert not any(t in bad for i, t in enumerate(seq.block)
                           if seq.block_start + i >= seq.prompt_len), seq.block
        seq.tokens.extend(seq.block)
        seq.block_start += self.block_size
        seq.block = [self.mask_id] * self.block_size
        seq.block_steps = seq.post_steps = seq.block_edits = 0
        seq.block_settled = False
        seq.canvas_row_current = False
        seq.canvas_confidence = None
        if seq.levenshtein is not None:
            seq.levenshtein = LevenshteinState()
        return True

    def frame(self, seq: Sequence) -> CanvasFrame:
        assert seq.block is not None
        committed, edited = seq.canvas_changes
        seq.canvas_changes = ((), ())
        return CanvasFrame(
            seq.block_start, tuple(None if t == self.mask_id else t for t in seq.block),
            committed, edited, tuple(seq.canvas_confidence or [None] * self.block_size),
            seq.block_steps, seq.stats.steps, False)
