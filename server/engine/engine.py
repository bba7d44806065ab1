"""`Engine`: the step loop's owner. One `step()` = schedule → forward → accept → update, in two
halves: `begin()` schedules and queues the device work, `complete()` waits for the step's read
and updates. The host loop runs them apart (`server.engine.host`): it emits a step's outputs
and takes new requests while the next step runs on the device."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass

import torch

from server.config import EngineConfig
from server.core import (
    EDITING_OFF,
    Batch,
    EngineOutput,
    FinishReason,
    GenerateRequest,
    Segment,
    SeqStatus,
    StepResult,
    StepStats,
)
from server.decoding.build import build_mode
from server.decoding.diffusion import BlockDiffusion
from server.decoding.modes import Finish
from server.distributed.launch import start_group
from server.grammar.waiting import GrammarWaitingRoom
from server.kv_cache.manager import KVManager
from server.kv_cache.page_pool import PagePool
from server.runner.builder import build_runner
from server.scheduler.scheduler import Scheduler
from server.startup import StartupPlan, fit_context, plan_startup

log = logging.getLogger(__name__)

# Test-only fault hook: a step whose batch holds a request with this prompt token id raises.
# Unset (the default) it costs nothing; see docs/reliability.md.
FAULT_TOKEN_ENV = "UNMASK_TEST_FAULT_TOKEN"
CULPRIT_ERROR = ("internal engine error while processing this request; it was failed alone "
                 "and the other requests went on")
_FAULT_TOKEN: int | None = int(os.environ[FAULT_TOKEN_ENV]) if os.environ.get(
    FAULT_TOKEN_ENV) else None


def _no_rows() -> list[int]:
    return []


@dataclass(frozen=True)
class InFlight:
    """A step between `Engine.begin` and `Engine.complete`."""

    batch: Batch
    finish: Finish  # waits for the step's read; tokens committed per logit segment
    failed: list[EngineOutput]  # outputs already known (grammar failures, culprits)
    t0: float


@dataclass(frozen=True)
class EngineInfo:
    """What the engine chose at start-up (logged, and sent to the API process)."""

    model_dir: str
    architecture: str
    mode: str
    device: str
    dtype: str
    block_size: int  # diffusion block size (== page size); 1 in AR mode
    page_size: int
    num_pages: int
    max_model_len: int
    vocab_size: int
    mask_id: int | None
    eos_ids: tuple[int, ...]
    attention_backend: str
    acceptance_backend: str
    levenshtein: bool = False  # LLaDA2.2 edit tokens (docs/llada22.md)
    editing_default: bool = False  # requests that do not choose edit (LLaDA2.1/2.2)


def engine_info(plan: StartupPlan, max_model_len: int, num_pages: int, attention: str,
                acceptance: str) -> EngineInfo:
    m, sp = plan.mcfg, plan.specials
    return EngineInfo(
        model_dir=str(plan.model_dir), architecture=m.architecture, mode=m.mode,
        device=str(plan.device), dtype=str(plan.dtype).removeprefix("torch."),
        block_size=plan.block_size or 1, page_size=plan.page_size, num_pages=num_pages,
        max_model_len=max_model_len, vocab_size=m.vocab_size, mask_id=sp.mask_id,
        eos_ids=sp.eos_ids, attention_backend=attention, acceptance_backend=acceptance,
        levenshtein=m.levenshtein and plan.block_size is not None,
        editing_default=plan.editing is not None)


class Engine:
    """`owns_process`: the engine runs in a process of its own (the engine process), which a
    broken tensor-parallel group may end as a last resort (`server.distributed.launch`)."""

    def __init__(self, cfg: EngineConfig, owns_process: bool = False) -> None:
        t0 = time.perf_counter()
        self.cfg = cfg
        plan = plan_startup(cfg)
        if plan.device.type == "cpu" and cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        self.group = group = (start_group(cfg, plan, owns_process)
                              if cfg.tensor_parallel_size > 1 else None)
        try:
            self._build(cfg, plan)
        except BaseException:
            if group is not None:
                group.abandon()
            raise
        log.info("engine ready in %.1fs: %s", time.perf_counter() - t0, self.info)

    def _build(self, cfg: EngineConfig, plan: StartupPlan) -> None:
        group = self.group
        self.runner = (build_runner(cfg, plan, group.tp, group.device, group.channel.send_step)
                       if group else build_runner(cfg, plan))
        self.mode, acceptance = build_mode(cfg, plan, self.runner.kv.k.device)
        pages = self.runner.kv.num_pages
        self.max_model_len = fit_context(plan.max_model_len, cfg.max_model_len is not None,
                                         pages, plan.page_size)
        self.kv = KVManager(PagePool(pages), plan.page_size, cfg.cache.prefix_caching)
        self.scheduler = Scheduler(cfg.scheduler, self.kv, self.mode, plan.specials.eos_ids)
        self.grammars = GrammarWaitingRoom(plan.model_dir, plan.mcfg.vocab_size,
                                           plan.specials.eos_ids)
        self.vocab_size, self.device = plan.mcfg.vocab_size, self.runner.kv.k.device
        self._rng = random.Random(cfg.seed)
        self.info = engine_info(plan, self.max_model_len, pages, self.runner.backend.name,
                                acceptance)

    # -- the rank group -------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.group.tp.size if self.group else 1

    def tick(self) -> None:
        """Called between steps and while idle (at least every `TICK_S`): keeps the other
        ranks' wait alive; raises once the group is broken."""
        if self.group is not None:
            self.group.tick()

    def close(self, failed: bool = False) -> None:
        """Stop the other ranks (killed when `failed`); single process: nothing to do."""
        if self.group is not None:
            if failed:
                self.group.abandon()
            else:
                self.group.close()

    # -- requests -------------------------------------------------------------------------
    def add_request(self, req: GenerateRequest) -> None:
        """Validate and queue; ValueError (nothing queued) if the request cannot be served."""
        P, p = len(req.prompt_ids), req.params
        if req.rid in self.scheduler.live or req.rid in self.grammars:
            raise ValueError(f"duplicate request id {req.rid!r}")
        if P == 0:
            raise ValueError("the prompt is empty")
        bad = next((t for t in req.prompt_ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, "
                             f"{self.vocab_size})")
        need = self.positions_needed(P, p.max_tokens)
        if need > self.max_model_len:
            raise ValueError(
                f"This model's maximum context length is {self.max_model_len} tokens. "
                f"However, you requested {need} tokens ({P} in the prompt, {p.max_tokens} "
                f"to generate{self._grid_note(P, p.max_tokens, need)})."
            )
        bad = next((t for t, _ in p.logit_bias if t >= self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"logit_bias token id {bad} is outside the vocabulary [0, "
                             f"{self.vocab_size})")
        if p.prompt_logprobs is not None:
            if isinstance(self.mode, BlockDiffusion):
                raise ValueError("prompt log-probabilities (echo with logprobs) are not "
                                 "defined for block-diffusion checkpoints: a diffusion model "
                                 "has no left-to-right distribution over its prompt")
            if len(req.prompt_ids) > self.cfg.scheduler.max_num_batched_tokens:
                raise ValueError(f"prompt log-probabilities need the prompt in one forward: "
                                 f"{len(req.prompt_ids)} tokens exceed --max-num-batched-tokens "
                                 f"{self.cfg.scheduler.max_num_batched_tokens}")
        if not isinstance(self.mode, BlockDiffusion) and p.canvas:
            raise ValueError("canvas frames show the active block of a block-diffusion model; "
                             "this one is autoregressive")
        if not isinstance(self.mode, BlockDiffusion) and (
                p.editing_threshold not in (None, EDITING_OFF) or p.max_post_steps is not None):
            raise ValueError("editing_threshold and max_post_steps apply to block-diffusion "
                             "checkpoints only; this one is autoregressive")
        pages = self.kv.pages_for(need)
        if pages > self.kv.pool.num_pages:
            raise ValueError(f"the request needs {need} positions ({P} in the prompt, "
                             f"{p.max_tokens} to generate), {pages} KV pages; the whole KV "
                             f"pool holds {self.kv.pool.num_pages}")
        seq = self.mode.new_sequence(req)
        if seq.levenshtein is not None and (not p.greedy or p.logprobs is not None
                                            or p.min_tokens or p.min_commit != 1):
            raise ValueError("LLaDA2.2 Levenshtein editing is greedy and moves cells within a "
                             "block: temperature > 0, logprobs, min_tokens and min_commit are "
                             "refused with editing on (editing_threshold \"off\" allows them; "
                             "docs/llada22.md)")
        if not p.greedy:
            seed = p.seed if p.seed is not None else self._rng.randrange(1 << 62)
            seq.generator = torch.Generator(self.device).manual_seed(seed)
        if req.grammar is not None:
            self.grammars.add(seq, req.grammar)  # scheduled once its grammar is compiled
        else:
            self.scheduler.add(seq)

    def positions_needed(self, prompt_len: int, max_tokens: int) -> int:
        """Positions a request occupies: diffusion always ends on a full block."""
        end = prompt_len + max_tokens
        b = getattr(self.mode, "block_size", 1)
        return -(-end // b) * b

    def _grid_note(self, P: int, n: int, need: int) -> str:
        return "" if need == P + n else f", rounded up to whole {self.info.block_size}-token blocks"

    def abort(self, rid: str) -> EngineOutput | None:
        return self.grammars.abort(rid) or self.scheduler.abort(rid)

    def has_work(self) -> bool:
        return self.scheduler.has_work() or len(self.grammars) > 0

    def fail_all(self, error: str) -> list[EngineOutput]:
        """Finish every live request with `error` (after an unexpected failure in a step)."""
        outs = [self.grammars.abort(rid, FinishReason.ERROR, error) for rid in self.grammars.rids()]
        outs += [self.scheduler.abort(rid, FinishReason.ERROR, error)
                 for rid in list(self.scheduler.live)]
        return [o for o in outs if o is not None]

    # -- the step -------------------------------------------------------------------------
    def step(self) -> StepResult:
        return self.complete(self.begin())

    @torch.inference_mode()
    def begin(self) -> InFlight:
        """Schedule and queue this step's forward and acceptance. Until `complete`, requests
        may be added and aborted (an aborted one's results are dropped); nothing else."""
        t0 = time.perf_counter()
        self.scheduler.stats = StepStats()
        failed = self._admit_grammars()
        batch = self.scheduler.schedule()
        try:
            finish = self._run(batch)
        except Exception:  # noqa: BLE001 - find the culprit, fail it alone, go on
            batch, finish, culprits = self._recover(batch)
            failed += culprits
        return InFlight(batch, finish, failed, t0)

    @torch.inference_mode()
    def complete(self, step: InFlight) -> StepResult:
        """Wait for `step`'s read, update the sequences; the step's outputs and statistics."""
        batch, failed = step.batch, step.failed
        try:
            committed = step.finish()
        except Exception:  # noqa: BLE001 - a device error surfaces at the read
            batch, finish, culprits = self._recover(batch)
            committed = finish()
            failed += culprits
        outputs = failed + self.scheduler.update(batch, committed)
        return StepResult(outputs, self._stats(batch, step.t0))

    def _recover(self, batch: Batch) -> tuple[Batch, Finish, list[EngineOutput]]:
        if self.group is not None:  # the ranks are mid-step: nothing can be retried
            raise
        log.exception("engine step failed; retrying its %d requests one by one",
                      len(batch.segments))
        good, committed, culprits = self._isolate(batch)
        return good, lambda: committed, culprits

    def _run(self, batch: Batch) -> Finish:
        """Queue forward and acceptance; its `Finish` gives tokens committed per logit
        segment."""
        if not batch.segments:
            return _no_rows
        if _FAULT_TOKEN is not None and any(_FAULT_TOKEN in s.seq.req.prompt_ids
                                            for s in batch.segments):
            raise RuntimeError("injected test fault")
        greedy = self.group is not None and self.mode.greedy_suffices(batch.logit_segments)
        logits = self.runner.forward(batch, greedy)
        if not batch.logit_segments:
            return _no_rows
        return self.mode.accept(batch.logit_segments, logits)

    def _isolate(self, batch: Batch) -> tuple[Batch, list[int], list[EngineOutput]]:
        """Re-run a failed step one segment at a time. Safe because schedule()'s side effects
        (pages grown, admissions, preemptions) hold for any subset of the batch, a forward only
        rewrites KV of the segment's own positions (the active block, or a prefill chunk), and
        acceptance mutates a sequence only after its logits are computed. Failing segments'
        requests finish with an error (their pages freed); the rest form the step's batch."""
        good: list[Segment] = []
        committed: list[int] = []
        culprits: list[EngineOutput] = []
        for seg in batch.segments:
            seg.seq.canvas_row_current = False  # the failed try may have rewritten its row
            if seg.seq.status is SeqStatus.FINISHED:
                continue  # aborted while the step was in flight: its pages are gone
            try:
                counts = self._run(Batch([seg], seg.num_tokens))()
            except Exception:  # noqa: BLE001
                log.exception("request %s fails the step on its own; failing it", seg.seq.rid)
                out = self.scheduler.abort(seg.seq.rid, FinishReason.ERROR, CULPRIT_ERROR)
                if out is not None:
                    culprits.append(out)
                continue
            good.append(seg)
            committed += counts
        return Batch(good, sum(s.num_tokens for s in good), batch.num_preempted), committed, \
            culprits

    def _admit_grammars(self) -> list[EngineOutput]:
        """Queue requests whose grammar is ready; when nothing else can run, wait a little."""
        if len(self.grammars) and not self.scheduler.has_work():
            self.grammars.wait(timeout=0.02)
        seqs, failed = self.grammars.ready()
        for seq in seqs:
            self.scheduler.add(seq)
        return failed

    def snapshot(self) -> StepStats:
        """Gauges only (no step counters): the state after aborts between steps."""
        return self._gauges(StepStats())

    def _stats(self, batch: Batch, t0: float) -> StepStats:
        s = self._gauges(self.scheduler.stats)
        s.num_seqs, s.num_tokens = len(batch.segments), batch.num_tokens
        s.num_logit_rows = len(batch.logit_segments)
        s.step_time = time.perf_counter() - t0
        return s

    def _gauges(self, s: StepStats) -> StepStats:
        pool = self.kv.pool
        s.num_running = len(self.scheduler.running)
        s.num_waiting = len(self.scheduler.waiting) + len(self.grammars)
        s.pages_used, s.pages_cached, s.pages_total = pool.num_used, pool.num_cached, pool.num_pages
        return s
