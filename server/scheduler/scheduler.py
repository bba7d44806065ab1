"""Step-level continuous batching (SGLang lineage): every step, running sequences first (oldest
first), then FCFS admission of waiting ones under a token budget and the free pages; the newest
running sequence is preempted (pages freed, recomputed later) when pages run out."""

from __future__ import annotations

import dataclasses
import time
from collections import deque

from server.config import SchedulerConfig
from server.core import (
    Batch,
    CanvasFrame,
    EngineOutput,
    FinishReason,
    Segment,
    SeqStatus,
    Sequence,
    StepStats,
)
from server.decoding.modes import DecodeMode
from server.kv_cache.manager import KVManager


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, kv: KVManager, mode: DecodeMode,
                 eos_ids: tuple[int, ...]) -> None:
        self.cfg, self.kv, self.mode = cfg, kv, mode
        self.eos_ids = frozenset(eos_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: oldest first
        self.live: dict[str, Sequence] = {}
        self.stats = StepStats()  # counters of the step being built; reset by the engine

    # -- queue ----------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if seq.rid in self.live:
            raise ValueError(f"duplicate request id {seq.rid!r}")
        seq.stats.arrival_time = seq.req.arrival_time
        seq.stats.prompt_tokens = seq.prompt_len
        self.live[seq.rid] = seq
        self.waiting.append(seq)

    def abort(self, rid: str, reason: FinishReason = FinishReason.ABORT,
              error: str | None = None) -> EngineOutput | None:
        seq = self.live.get(rid)
        if seq is None:
            return None
        if seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        seq.error = error
        self._finish(seq, reason)
        return EngineOutput(rid, [], True, reason, error, seq.stats)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- schedule -------------------------------------------------------------------------
    def schedule(self) -> Batch:
        budget = self.cfg.max_num_batched_tokens
        segments: list[Segment] = []
        preempted = 0
        for seq in list(self.running):
            if seq.status is not SeqStatus.RUNNING:
                continue  # preempted earlier in this loop
            seg = self._fit(self.mode.segment(seq), budget)
            if seg is None:
                continue
            while not self.kv.grow(seq, seg.end):
                victim = self.running[-1]  # newest; never one already scheduled (all older)
                self._preempt(victim)
                preempted += 1
                if victim is seq:
                    break
            if seq.status is SeqStatus.RUNNING:
                segments.append(seg)
                budget -= seg.num_tokens
        if not preempted:
            budget = self._admit(segments, budget)
        self.stats.num_preempted += preempted
        return Batch(segments, sum(s.num_tokens for s in segments), preempted)

    def _admit(self, segments: list[Segment], budget: int) -> int:
        while (self.waiting and len(self.running) < self.cfg.max_running_requests
               and budget >= self.mode.attn_block):
            seq = self.waiting[0]
            reserve = self.cfg.admission_reserve_pages * len(self.running)
            num_final = self.mode.num_final(seq)
            hit = self.kv.admit(seq, num_final, seq.canvas_end, reserve)
            if hit is None:
                break
            self.waiting.popleft()
            self.running.append(seq)
            seq.status = SeqStatus.RUNNING
            self.stats.prefix_query_tokens += num_final
            self.stats.prefix_hit_tokens += hit
            if seq.stats.first_scheduled_time is None:
                seq.stats.first_scheduled_time = time.monotonic()
                seq.stats.cached_prompt_tokens = min(hit, seq.prompt_len)
            seg = self._fit(self.mode.segment(seq), budget)
            if seg is not None:
                segments.append(seg)
                budget -= seg.num_tokens
        return budget

    def _fit(self, seg: Segment, budget: int) -> Segment | None:
        """The segment, or a prefill chunk of whole attention blocks that fits the budget."""
        if seg.num_tokens <= budget:
            return seg
        if seg.logits_start is not None and seg.logits_start < seg.end - self.mode.attn_block:
            return None  # logits wanted along the whole segment (prompt logprobs): not split
        n = budget // self.mode.attn_block * self.mode.attn_block
        if n <= 0:
            return None
        end = seg.start + n  # block-aligned, so it stops at or before the active block
        return Segment(seg.seq, seg.start, end, logits_start=None, cache_end=end)

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        self.mode.release(seq)
        self.running.remove(seq)
        seq.status = SeqStatus.WAITING
        seq.stats.preemptions += 1
        self.waiting.appendleft(seq)

    # -- update ---------------------------------------------------------------------------
    def update(self, batch: Batch, committed: list[int]) -> list[EngineOutput]:
        """After the forward and acceptance: persist/seal KV, stop checks, emit, advance."""
        for seg in batch.segments:
            if seg.seq.status is SeqStatus.FINISHED:
                continue  # aborted while the step was in flight (already reported)
            seg.seq.num_cached = seg.cache_end
            self.kv.seal(seg.seq)
        outputs = []
        for seg, n in zip(batch.logit_segments, committed, strict=True):
            seq = seg.seq
            if seq.status is SeqStatus.FINISHED:
                continue
            seq.stats.steps += 1
            seq.block_steps += 1
            self.stats.tokens_committed += n
            frame = self.mode.frame(seq) if seq.params.canvas else None
            done = self._advance(seq)  # before the stop checks: an editing row emits whole blocks
            out = self._emit(seq, frame and dataclasses.replace(frame, block_done=done))
            if out is not None:
                outputs.append(out)
        return outputs

    def _advance(self, seq: Sequence) -> bool:
        """True when the step completed the sequence's block."""
        steps, edits, posts, editing = (seq.block_steps, seq.block_edits, seq.post_steps,
                                        seq.editing is not None)
        if not self.mode.advance(seq):
            return False
        self.kv.seal(seq)  # an editing block's KV may have become final just now
        seq.stats.blocks += 1
        self.stats.blocks_completed += 1
        self.stats.steps_per_block.append(steps)
        if editing:
            self.stats.edits_per_block.append(edits)
            self.stats.post_steps_per_block.append(posts)
        return True

    def _emit(self, seq: Sequence, frame: CanvasFrame | None = None) -> EngineOutput | None:
        """Report the growth of the contiguous committed output (and `frame`, which is always
        reported); finish on a stop id or max_tokens (the output is cut there, stop id
        included)."""
        out = self.mode.output_ids(seq)
        p = seq.params
        stops = (frozenset() if p.ignore_eos else self.eos_ids) | frozenset(p.stop_token_ids)
        limit, reason = min(len(out), p.max_tokens), None
        for i in range(seq.num_emitted, limit):
            if out[i] in stops:
                limit, reason = i + 1, FinishReason.STOP
                break
        if reason is None and len(out) >= p.max_tokens:
            reason = FinishReason.LENGTH
        new = out[seq.num_emitted : limit]
        logprobs = None
        if p.logprobs is not None:  # output k sits at absolute position prompt_len + k
            logprobs = [seq.logprob_at.pop(seq.prompt_len + k)
                        for k in range(seq.num_emitted, limit)]
        seq.num_emitted = limit
        if new and seq.stats.first_token_time is None:
            seq.stats.first_token_time = time.monotonic()
        if reason is not None:
            self._finish(seq, reason)
        if not new and reason is None and frame is None:
            return None
        prompt_lp = None
        if seq.prompt_logprobs is not None and not seq.prompt_logprobs_sent:
            prompt_lp, seq.prompt_logprobs_sent = seq.prompt_logprobs, True
        return EngineOutput(seq.rid, new, reason is not None, reason,
                            stats=seq.stats if reason is not None else None, logprobs=logprobs,
                            prompt_logprobs=prompt_lp, canvas=frame)

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        if seq.page_table:
            self.kv.free(seq)
        self.mode.release(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        seq.stats.output_tokens = seq.num_emitted
        seq.stats.finished_time = time.monotonic()
        self.live.pop(seq.rid, None)
