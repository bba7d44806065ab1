"""The step layout CUDA graphs replay, checked on CPU (issue 18): a realistic serving mix —
staggered arrivals, prefill chunks, block completions, LLaDA2.0 and 2.1 (editing) rows — runs
through the real scheduler and engine at c = 16, 64 and 128 with the graph runner's static
computation (no graph on CPU); >= 95 % of the steps with logits must fit a bucket, padding
must stay under 10 % of the rows forwarded, every step with logits makes exactly one host
round trip, and the outputs equal the eager engine's token for token."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from server import LLM
from server.core import GenerateRequest, SamplingParams
from server.engine.engine import Engine
from server.kv_cache.tensors import KVCache
from server.runner.cuda_graphs import GraphedRunner
from server.runner.model_runner import ModelRunner
from server.runner.step_layout import graph_bucket, graph_buckets
from server.transfer import ROUND_TRIPS


def test_buckets_pad_under_one_sixteenth() -> None:
    for top in (1, 7, 16, 17, 256, 1000):
        buckets = graph_buckets(top)
        assert buckets[-1] == top and list(buckets) == sorted(set(buckets))
        for n in range(1, top + 1):
            b = graph_bucket(n, buckets)
            assert b is not None and n <= b and (b - n) / b < 1 / 16, (top, n, b)
        assert graph_bucket(top + 1, buckets) is None and graph_bucket(0, buckets) is None
    assert len(graph_buckets(256)) < 70  # few enough graphs to capture at start-up


def _graphed(llm: LLM) -> GraphedRunner:
    """The engine's eager runner (built with the paged attention backend) wrapped by the graph
    runner, running its static computation without a graph (CPU): the layout, buckets,
    padding and attention of the GPU path."""
    eng = llm.engine
    eager = eng.runner
    assert isinstance(eager, ModelRunner)  # CPU: built eager whatever the flag says
    assert eager.backend.name == "paged"
    kv = eager.kv  # the same pool, plus the scratch page pad blocks write
    inner = ModelRunner(eager.model, KVCache(kv.k.shape[0], kv.num_pages, kv.page_size,
                                             kv.k.shape[2], kv.k.shape[3], kv.k.dtype,
                                             kv.k.device, scratch=True),
                        eager.backend, eager.attn_block, eager.device, never=eager.never)
    runner = GraphedRunner(inner, eng.cfg.scheduler.max_num_batched_tokens
                           // eager.attn_block, eng.max_model_len, capture=False)
    eng.runner = runner  # type: ignore[assignment]
    return runner


def _serving_mix(eng: Engine, c: int, seed: int) -> tuple[dict[str, list[int]], list[int],
                                                           list[int], int]:
    """1.5c requests arriving a few per step: prompts of 5..300 tokens (prefill chunks and
    prefix hits), 40..130 new tokens (block completions), every third with LLaDA2.1 editing.
    Returns the outputs, per step the round trips and whether it had logit rows, and the
    number of blocks completed plus preemptions."""
    rng = random.Random(seed)
    shared = [rng.randrange(100, 800) for _ in range(64)]  # a common system prompt
    pending = []
    for i in range(3 * c // 2):
        n = rng.randrange(5, 300)  # + 64 + 130 new: within 512
        prompt = (shared[: rng.choice((0, 64))] + [rng.randrange(100, 800) for _ in range(n)])
        params = SamplingParams(max_tokens=rng.randrange(40, 130), ignore_eos=True,
                                editing_threshold=0.5 if i % 3 == 0 else None)
        pending.append(GenerateRequest(f"r{i}", tuple(prompt), params))
    out: dict[str, list[int]] = {}
    trips: list[int] = []
    with_logits: list[int] = []
    events = 0
    while pending or eng.has_work():
        for _ in range(rng.randrange(0, 1 + max(1, c // 8))):
            if pending:
                eng.add_request(pending.pop(0))
        before = ROUND_TRIPS.count
        result = eng.step()
        trips.append(ROUND_TRIPS.count - before)
        with_logits.append(result.stats.num_logit_rows)
        events += result.stats.blocks_completed + result.stats.num_preempted
        for o in result.outputs:
            out.setdefault(o.rid, []).extend(o.new_token_ids)
    return out, trips, with_logits, events


@pytest.mark.parametrize("c", [16, 64, 128])
def test_serving_mix_graphs_pads_little_one_round_trip(tiny_llada2_peaky: Path, c: int) -> None:
    llm = LLM(str(tiny_llada2_peaky), device="cpu", num_pages=4096, max_running_requests=c,
              max_model_len=512, attention_backend="paged")
    runner = _graphed(llm)
    out, trips, with_logits, events = _serving_mix(llm.engine, c, seed=c)
    steps = sum(1 for n in with_logits if n)
    eligible = runner.replays / (runner.replays + runner.eager_steps)
    padding = runner.rows_padding / runner.rows_forwarded
    print(f"c={c}: {steps} steps with logits, {eligible:.1%} graph-eligible, padding "
          f"{padding:.2%} of {runner.rows_forwarded} rows forwarded")
    assert steps > 50 and len(out) == 3 * c // 2
    assert eligible >= 0.95 and padding < 0.10
    assert all(t == (1 if n else 0) for t, n in zip(trips, with_logits, strict=True)), trips
    # the blocks live on the device: a row is uploaded when a sequence starts (or restarts
    # after preemption) and when it starts a new block, never on a step of a block under way
    uploaded = llm.engine.mode.table.rows_uploaded  # type: ignore[union-attr]
    print(f"c={c}: {uploaded} canvas rows uploaded for {sum(with_logits)} logit rows")
    assert uploaded <= len(out) + events
    if c == 16:  # the layout changes nothing: the eager engine gives the same tokens
        eager = LLM(str(tiny_llada2_peaky), device="cpu", num_pages=4096,
                    max_running_requests=c, max_model_len=512)
        assert _serving_mix(eager.engine, c, seed=c)[0] == out


def test_autoregressive_steps_ride_the_layout(tiny_ling2: Path) -> None:
    prompts = ["Hello there", "The quick brown fox jumps over", "a"] * 3
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    ref = LLM(str(tiny_ling2), device="cpu", num_pages=64).generate(prompts, params)
    llm = LLM(str(tiny_ling2), device="cpu", num_pages=64, attention_backend="paged")
    runner = _graphed(llm)
    got = llm.generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]
    assert runner.replays > 0 and 9 in runner.graphs  # nine decode rows: bucket 9


def test_cpu_engines_are_eager_whatever_the_flag(tiny_llada2: Path) -> None:
    for eager in (True, False):
        llm = LLM(str(tiny_llada2), device="cpu", num_pages=16, enforce_eager=eager)
        assert isinstance(llm.engine.runner, ModelRunner) and not llm.engine.runner.uses_graphs


@pytest.mark.parametrize("arch", ["tiny_llada2_peaky", "tiny_ling2"])
def test_paged_backend_eager_equals_torch(arch: str, request: pytest.FixtureRequest) -> None:
    """The paged query-block backend run eagerly (as on CUDA beyond the largest bucket) gives
    the torch backend's tokens, prefill chunks included."""
    model = str(request.getfixturevalue(arch))
    prompts = ["Hello there " * 12, "The quick brown fox jumps over", "a"]
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    ref = LLM(model, device="cpu", num_pages=64, max_num_batched_tokens=64).generate(
        prompts, params)
    got = LLM(model, device="cpu", num_pages=64, max_num_batched_tokens=64,
              attention_backend="paged").generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in ref]


STEP_PATH = ("server/decoding", "server/runner", "server/engine", "server/scheduler",
             "server/grammar/accept.py", "server/kv_cache")
# host-side tensors only (qo_indptr, q_start and kv_len of a ForwardBatch live on the CPU)
HOST_SIDE = {"server/runner/flashinfer_attention.py"}


def test_device_reads_go_through_transfer() -> None:
    """Every device→host read on the step path is `server.transfer.read` (counted), and host
    values reach the device through `server.transfer.upload` (pinned, asynchronous)."""
    root = Path(__file__).resolve().parents[2]
    files = [p for entry in STEP_PATH for p in ((root / entry).rglob("*.py")
             if (root / entry).is_dir() else [root / entry])]
    assert len(files) > 15
    offenders = [f"{p.relative_to(root)}:{i}" for p in files
                 if str(p.relative_to(root)) not in HOST_SIDE
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if any(call in line for call in (".tolist()", ".item()", ".cpu()"))
                 or "torch.tensor(" in line and "device=" in line]  # a pageable upload syncs
    assert not offenders, offenders


def test_pad_blocks_write_only_the_scratch_page(tiny_llada2_peaky: Path) -> None:
    """What start-up capture runs (pad blocks only, every bucket) and a padded step's pads
    write the scratch page and nothing else of the pool."""
    llm = LLM(str(tiny_llada2_peaky), device="cpu", num_pages=64, attention_backend="paged")
    runner = _graphed(llm)
    llm.generate(["Hello there", "a"], SamplingParams(max_tokens=40, ignore_eos=True))
    kv, ps = runner.kv, runner.kv.page_size
    pool = slice(0, kv.num_pages * ps)
    k, v = kv.k[:, pool].clone(), kv.v[:, pool].clone()
    for bucket in (1, 3, runner.buckets[-1]):
        runner._fill(None, bucket)
        runner._static_forward(bucket)
    assert torch.equal(kv.k[:, pool], k) and torch.equal(kv.v[:, pool], v)
    scratch = slice(runner.scratch * ps, (runner.scratch + 1) * ps)
    assert kv.k[:, scratch].abs().sum() > 0  # the pads did write there
