"""A step in flight (issue 18): `Engine.begin` queues a step's device work and `complete` waits
for its one read, so the host loop emits the last step's outputs and takes new requests while
the next step runs. Requests added or aborted between the two halves change nothing else: the
others' tokens equal a lone run's, the aborted one reports nothing more, its KV pages and its
device canvas row come back."""

from __future__ import annotations

from pathlib import Path

from server import LLM
from server.core import FinishReason, GenerateRequest, SamplingParams
from server.decoding.diffusion import BlockDiffusion
from server.engine.engine import Engine

PROMPTS = [[101, 102, 103] * 9, [300 + i for i in range(40)], [7, 8, 9], [500, 501] * 20]


def _requests(editing: float | None) -> list[GenerateRequest]:
    params = SamplingParams(max_tokens=70, ignore_eos=True, editing_threshold=editing)
    return [GenerateRequest(f"r{i}", tuple(p), params) for i, p in enumerate(PROMPTS)]


def _alone(eng: Engine, req: GenerateRequest) -> list[int]:
    eng.add_request(req)
    out: list[int] = []
    while eng.has_work():
        for o in eng.step().outputs:
            out += o.new_token_ids
    return out


def test_add_and_abort_while_a_step_is_in_flight(tiny_llada2_peaky: Path) -> None:
    for editing in (None, 0.5):  # LLaDA2.0 rows, then LLaDA2.1 editing rows
        reqs = _requests(editing)
        solo = LLM(str(tiny_llada2_peaky), device="cpu", num_pages=256).engine
        want = {r.rid: _alone(solo, r) for r in reqs}
        eng = LLM(str(tiny_llada2_peaky), device="cpu", num_pages=256).engine
        eng.add_request(reqs[0])
        eng.add_request(reqs[1])
        got: dict[str, list[int]] = {}
        finished: dict[str, FinishReason | None] = {}
        flight, turn = eng.begin(), 0
        while flight is not None:
            done = eng.complete(flight)
            flight = eng.begin() if eng.has_work() else None
            for o in done.outputs:  # emitted while the next step is in flight
                assert o.rid not in finished, f"{o.rid} reported after it finished"
                got.setdefault(o.rid, []).extend(o.new_token_ids)
                if o.finished:
                    finished[o.rid] = o.finish_reason
            turn += 1
            if turn == 3:  # r1 is in the step in flight; r2 and r3 arrive meanwhile
                aborted = eng.abort("r1")
                assert aborted is not None and aborted.finish_reason is FinishReason.ABORT
                finished["r1"] = FinishReason.ABORT
                eng.add_request(reqs[2])
                eng.add_request(reqs[3])
        assert turn > 10
        for rid in ("r0", "r2", "r3"):
            assert got[rid] == want[rid] and finished[rid] is FinishReason.LENGTH, rid
        assert got.get("r1", []) == want["r1"][: len(got.get("r1", []))]
        assert eng.kv.pool.num_used == 0
        assert isinstance(eng.mode, BlockDiffusion)
        table = eng.mode.table
        assert sorted(table._free) == list(range(table.canvas.shape[0]))  # every row back


def test_host_loop_emits_while_the_next_step_is_in_flight(tiny_llada2_peaky: Path) -> None:
    """The real host loop (`EngineThread`): when step n's outputs are emitted, step n+1 has
    already begun (`begin` gives the scheduler a fresh statistics object), except after the
    last step; the outputs equal lone runs'."""
    import threading

    from server.engine.host import EngineThread
    from server.engine.llm import engine_config

    reqs = _requests(None)
    solo = LLM(str(tiny_llada2_peaky), device="cpu", num_pages=256).engine
    want = {r.rid: _alone(solo, r) for r in reqs}
    engines: list[Engine] = []
    got: dict[str, list[int]] = {}
    begun: list[bool] = []
    done = threading.Event()

    def make() -> Engine:
        engines.append(Engine(engine_config(str(tiny_llada2_peaky), device="cpu",
                                            num_pages=256)))
        return engines[0]

    def on_step(outputs: list, stats: object) -> None:
        begun.append(engines[0].scheduler.stats is not stats)
        for o in outputs:
            got.setdefault(o.rid, []).extend(o.new_token_ids)
        if sum(o.finished for o in outputs) and all(
                r.rid in got for r in reqs) and not engines[0].has_work():
            done.set()

    thread = EngineThread(make, on_step)
    try:
        for r in reqs:
            thread.add_request(r)
        assert done.wait(120)
    finally:
        thread.shutdown()
    assert got == want
    assert begun[-1] is False and sum(begun) >= len(begun) - 2, begun
