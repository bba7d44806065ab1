"""Scheduler behaviour with real parts and no model: the decode mode commits tokens by hand."""

from __future__ import annotations

from server.config import SchedulerConfig
from server.core import GenerateRequest, SamplingParams, SeqStatus
from server.decoding.diffusion import BlockDiffusion
from server.kv_cache.manager import KVManager
from server.kv_cache.page_pool import PagePool
from server.scheduler.scheduler import Scheduler

B, MASK, EOS = 4, 0, 1


def make(num_pages: int = 64, budget: int = 64, max_running: int = 8) -> Scheduler:
    mode = BlockDiffusion(B, MASK, 0.95)
    kv = KVManager(PagePool(num_pages), B)
    cfg = SchedulerConfig(max_running_requests=max_running, max_num_batched_tokens=budget,
                          admission_reserve_pages=0)
    return Scheduler(cfg, kv, mode, (EOS,))


def add(s: Scheduler, rid: str, prompt_len: int, max_tokens: int = 8) -> None:
    req = GenerateRequest(rid, tuple(range(10, 10 + prompt_len)), SamplingParams(max_tokens))
    s.add(s.mode.new_sequence(req))


def step(s: Scheduler, commit_all: bool = False) -> tuple[list[tuple[str, int, int, bool]], list]:
    """Schedule, then commit one (or every) undecided position of each active block."""
    batch = s.schedule()
    counts = []
    for seg in batch.logit_segments:
        seq = seg.seq
        und = [i for i, u in enumerate(s.mode.undecided(seq)) if u]
        for i in und if commit_all else und[:1]:
            seq.block[i] = 7
        counts.append(len(und) if commit_all else 1)
    outs = s.update(batch, counts)
    plan = [(g.seq.rid, g.start, g.end, g.logits_start is not None) for g in batch.segments]
    return plan, outs


def test_first_step_layout_and_commit_segment() -> None:
    s = make()
    add(s, "a", prompt_len=6)  # blocks: [0,4) prompt, [4,8) = 2 prompt ids + 2 masks
    plan, _ = step(s, commit_all=True)
    assert plan == [("a", 0, 8, True)]
    assert s.stats.blocks_completed == 1 and s.stats.steps_per_block == [1]
    plan, outs = step(s)  # block [4,8) is re-forwarded with its final ids + the next block
    assert plan == [("a", 4, 12, True)]
    assert s.live["a"].num_sealed_pages == 2 and s.live["a"].num_cached == 8
    assert outs[0].new_token_ids == [7]  # positions 6, 7 committed earlier; 8 is the new one


def test_prefill_is_chunked_by_the_token_budget() -> None:
    s = make(budget=12)
    add(s, "long", prompt_len=30)  # 7 full prompt blocks, then the active block [28, 32)
    plans = [step(s)[0] for _ in range(3)]
    assert plans == [[("long", 0, 12, False)], [("long", 12, 24, False)],
                     [("long", 24, 32, True)]]


def test_running_first_then_fcfs_and_max_running() -> None:
    s = make(max_running=2)
    for rid in "abc":
        add(s, rid, prompt_len=3)
    plan, _ = step(s)
    assert [p[0] for p in plan] == ["a", "b"] and [q.rid for q in s.waiting] == ["c"]
    s.abort("a")
    plan, _ = step(s)
    assert [p[0] for p in plan] == ["b", "c"]


def test_newest_is_preempted_and_keeps_its_block() -> None:
    s = make(num_pages=5, max_running=4)
    add(s, "old", prompt_len=7, max_tokens=12)  # 2 pages
    add(s, "new", prompt_len=7, max_tokens=12)  # 2 pages
    step(s, commit_all=True)  # both finish block 1; each needs a third page next step
    new = s.live["new"]
    block_before = list(new.block)
    plan, _ = step(s)
    assert [p[0] for p in plan] == ["old"] and new.status is SeqStatus.WAITING
    assert new.stats.preemptions == 1 and not new.page_table and new.block == block_before
    while s.has_work():
        step(s, commit_all=True)
    assert s.kv.pool.num_used == 0


def test_stop_id_cuts_output_and_length_finishes() -> None:
    s = make()
    add(s, "e", prompt_len=2, max_tokens=8)
    seq = s.live["e"]
    batch = s.schedule()
    seq.block[2:4] = [5, EOS]  # the model commits a token and EOS in one step
    outs = s.update(batch, [2])
    assert outs[-1].finished and outs[-1].new_token_ids == [5, EOS]
    assert outs[-1].finish_reason.value == "stop" and s.kv.pool.num_used == 0
    add(s, "n", prompt_len=2, max_tokens=3)
    outs = []
    while s.has_work():
        outs += step(s, commit_all=True)[1]
    assert outs[-1].finish_reason.value == "length"
    assert sum(len(o.new_token_ids) for o in outs) == 3
