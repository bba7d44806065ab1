"""Tensor/expert parallelism on CPU (gloo, one engine process per rank): greedy tokens equal
the single-process engine's token for token, in both decoding modes, at TP 2 and at TP 4 (more
ranks than the tiny model's 2 KV heads: replicated); `unmask serve --tensor-parallel-size 2`
serves them over HTTP and leaves no rank behind on shutdown, also with the ranks on two
simulated nodes (`--nnodes 2`, two `unmask serve` processes); a rank killed mid-run, or a
failure on rank 0 mid-step, ends the whole server non-zero within a bounded time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from server.cli import main
from server.core import SamplingParams
from server.engine.llm import LLM
from server.model.config import ModelConfig
from tests.e2e.engine_harness import make_engine, make_prompt, run
from tests.e2e.server_harness import RemoteServer, free_port


def _requests(model_dir: Path, diffusion: bool) -> list[tuple]:
    # prompts inside one page, on a page boundary and across several; staggered arrivals.
    # Steps of plain greedy rows gather only each row's argmax/max/log-sum-exp; the request
    # with logprobs makes its steps gather whole logit rows.
    return [(f"r{i}", make_prompt(model_dir, P, seed=10 + i), SamplingParams(max_tokens=m))
            for i, (P, m) in enumerate([(1, 33), (31, 40), (32, 64), (70, 45), (100, 20)])] + [
        ("lp", make_prompt(model_dir, 40, seed=20), SamplingParams(max_tokens=30, logprobs=2))
    ] + ([("edit", make_prompt(model_dir, 12, seed=21),  # LLaDA2.1 editing under TP too
           SamplingParams(max_tokens=40, editing_threshold=0.5)),
          ("canvas", make_prompt(model_dir, 9, seed=22),  # canvas rows stay on the summary path
           SamplingParams(max_tokens=40, canvas=True))] if diffusion else [])


@pytest.mark.parametrize(("weights", "tp", "options"), [
    ("tiny_llada2_peaky", 2, {}), ("tiny_ling2", 2, {}), ("tiny_llada2_peaky", 4, {}),
    ("tiny_ling2", 4, {}), ("tiny_llada2_peaky", 2, {"simulate_tpf": 2.5})])
def test_tp_greedy_equals_tp1(weights: str, tp: int, options: dict,
                              request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(weights)
    mcfg = ModelConfig.from_file(model_dir / "config.json")
    assert mcfg.num_key_value_heads == 2  # so TP 4 replicates each KV head on two ranks
    reqs = _requests(model_dir, mcfg.mode == "diffusion")
    single = run(make_engine(model_dir, max_running_requests=4, **options), reqs, stagger=2)
    engine = make_engine(model_dir, max_running_requests=4, tensor_parallel_size=tp,
                         **options)
    try:
        # rank 0 really holds its share: KV heads (one, replicated, beyond 2 ranks),
        # attention heads, routed experts and vocabulary rows
        assert engine.runner.kv.k.shape[2] == max(1, mcfg.num_key_value_heads // tp)
        model = engine.runner.model
        layer = model.model.layers[mcfg.num_hidden_layers - 1]
        assert layer.attention.nh == mcfg.num_attention_heads // tp
        assert layer.mlp.experts.w13.shape[0] == mcfg.num_experts // tp
        assert model.lm_head.weight.shape[0] == -(-mcfg.vocab_size // tp)
        parallel = run(engine, reqs, stagger=2)
        assert engine.group is not None and engine.group.procs.exited() == {}
    finally:
        engine.close()
    assert parallel.tokens == single.tokens
    assert parallel.reasons == single.reasons
    assert all(len(t) > 0 for t in parallel.tokens.values())


def test_tp_size_not_dividing_is_refused(tiny_llada2: Path) -> None:
    with pytest.raises(ValueError, match="tensor_parallel_size 3"):
        make_engine(tiny_llada2, tensor_parallel_size=3)


PROMPTS = ["def fib(n):", "The capital of France is"]


@pytest.fixture(scope="module")
def single_texts(tiny_llada2_peaky: Path) -> list[str]:
    """The offline single-process engine's greedy texts for PROMPTS."""
    return [o.text for o in LLM(str(tiny_llada2_peaky), device="cpu", num_pages=256)
            .generate(PROMPTS, SamplingParams(max_tokens=40))]


def test_serve_tp2(tiny_llada2_peaky: Path, single_texts: list[str]) -> None:
    prompts, want = PROMPTS, single_texts
    srv = RemoteServer(tiny_llada2_peaky, "--tensor-parallel-size", "2", "--num-pages", "256")
    try:
        client = srv.client()
        got = [client.completions.create(model="tiny", prompt=p, max_tokens=40, temperature=0)
               .choices[0].text for p in prompts]
    finally:
        t0 = time.monotonic()
        code = srv.stop()
        stopped_in = time.monotonic() - t0
    assert got == want
    assert code == 0 and stopped_in < 15
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # every process of the server's session is gone
        try:
            os.killpg(srv.proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail("a process of the tensor-parallel server outlived it")


def test_serve_two_nodes(tiny_llada2_peaky: Path, single_texts: list[str],
                         tmp_path: Path) -> None:
    """`--tp 4 --nnodes 2` on one machine: node 1 (ranks 2-3, no HTTP) and node 0 (API, ranks
    0-1) as two `unmask serve` processes joined through the TCPStore at --dist-init-addr;
    four ranks on a model of 2 KV heads replicate them. Text equals the single-process
    engine's, and SIGTERM to node 0 ends node 1 too (its ranks are told to stop)."""
    prompts, want = PROMPTS, single_texts
    port = free_port()
    group = ["--tensor-parallel-size", "4", "--nnodes", "2", "--dist-init-addr",
             f"127.0.0.1:{port}", "--num-pages", "256"]
    unmask = str(Path(sys.executable).parent / "unmask")
    with open(tmp_path / "node1.log", "w") as log:
        node1 = subprocess.Popen([unmask, "serve", str(tiny_llada2_peaky), *group,
                                  "--node-rank", "1", "--port", "1"],  # no API: port unused
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        srv = RemoteServer(tiny_llada2_peaky, *group, "--node-rank", "0")
        try:
            client = srv.client()
            got = [client.completions.create(model="tiny", prompt=p, max_tokens=40,
                                             temperature=0).choices[0].text for p in prompts]
        finally:
            code = srv.stop()
        assert got == want
        assert code == 0
        assert node1.wait(15) == 0, (tmp_path / "node1.log").read_text()[-3000:]
    finally:
        if node1.poll() is None:
            os.killpg(node1.pid, signal.SIGKILL)
            node1.wait(5)


def test_node_sigterm_stops_its_ranks(tiny_llada2: Path, tmp_path: Path) -> None:
    """Node k > 0 exits on SIGTERM, with its ranks, even while rank 0 never came up."""
    unmask = str(Path(sys.executable).parent / "unmask")
    log = tmp_path / "node1.log"
    with open(log, "w") as f:
        node1 = subprocess.Popen([unmask, "serve", str(tiny_llada2), "--tp", "2", "--nnodes",
                                  "2", "--node-rank", "1", "--dist-init-addr",
                                  f"127.0.0.1:{free_port()}"],
                                 stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while "joining" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)  # then its rank retries rank 0's store
    assert node1.poll() is None, log.read_text()
    node1.send_signal(signal.SIGTERM)
    try:
        assert node1.wait(15) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(node1.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        pytest.fail("a rank of node 1 outlived it")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node1.pid, signal.SIGKILL)


def test_inconsistent_topology_is_refused(tiny_llada2: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tiny_llada2), "--tp", "3", "--nnodes", "2", "--node-rank", "1",
                 "--dist-init-addr", "127.0.0.1:1"]) == 2
    assert "must be a multiple of --nnodes 2" in capsys.readouterr().err
    assert main(["serve", str(tiny_llada2), "--tp", "2", "--nnodes", "2"]) == 2
    assert "needs --dist-init-addr" in capsys.readouterr().err




def _session_pids(sid: int, needle: str) -> list[int]:
    """Processes of session `sid` whose command line contains `needle`."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getsid(int(d.name)) == sid and needle.encode() in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            continue
    return pids


@pytest.mark.parametrize("failure", ["rank 1 killed", "rank 0 fails mid-step"])
def test_rank_failure_ends_the_server(failure: str, tiny_llada2: Path) -> None:
    """A long stream is running when a rank fails: the stream ends with an error, health turns
    503, and the server (every rank with it) exits non-zero within a bounded time."""
    marker = 700  # rank 0's test-only fault hook (UNMASK_TEST_FAULT_TOKEN)
    env = {"UNMASK_TEST_FAULT_TOKEN": str(marker)} if failure.startswith("rank 0") else {}
    srv = RemoteServer(tiny_llada2, "--tp", "2", "--num-pages", "256", env=env)
    try:
        client = srv.client(timeout=60)
        stream = client.completions.create(model="tiny", prompt=[120, 130], max_tokens=1500,
                                           stream=True, extra_body={"ignore_eos": True})
        next(iter(stream))  # the request is running
        workers = _session_pids(srv.proc.pid, "server.distributed.worker")
        assert len(workers) == 1
        t0 = time.monotonic()
        if env:  # the poisoned request joins the running batch
            with contextlib.suppress(openai.APIError):
                client.completions.create(model="tiny", prompt=[150, marker], max_tokens=8)
        else:
            os.kill(workers[0], signal.SIGKILL)
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass
        assert time.monotonic() - t0 < 30
        # the server lingers a few seconds after the engine's death, answering 503
        assert httpx.get(srv.url + "/health", timeout=5).status_code == 503
        code = srv.proc.wait(30)
        assert code != 0, srv.tail()
        assert time.monotonic() - t0 < 60
    finally:
        srv.stop()
    deadline = time.monotonic() + 15
    while _session_pids(srv.proc.pid, "python") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session_pids(srv.proc.pid, "python") == [], "a rank outlived the failed server"


def test_offline_llm_tp2_closes_its_ranks(tiny_llada2_peaky: Path,
                                          single_texts: list[str]) -> None:
    """`with LLM(..., tensor_parallel_size=2)`: same text as one rank; leaving the block stops
    rank 1 and removes the group's private store directory."""
    with LLM(str(tiny_llada2_peaky), device="cpu", num_pages=256,
             tensor_parallel_size=2) as llm:
        got = [o.text for o in llm.generate(PROMPTS, SamplingParams(max_tokens=40))]
        group = llm.engine.group
        assert group is not None and group.private is not None
        procs, private = list(group.procs.procs.values()), Path(group.private)
        assert private.is_dir() and all(p.poll() is None for p in procs)
    assert got == single_texts
    assert all(p.poll() == 0 for p in procs) and not private.exists()


def test_tp2_llada22_equals_tp1(tiny_llada22_peaky: Path) -> None:
    """LLaDA2.2 under TP 2: block routing on the replicated router, expert-parallel MoE, the
    Levenshtein rule on rank 0 (its rows always gather whole logit slices)."""
    model_dir = tiny_llada22_peaky
    reqs = [(f"l{i}", make_prompt(model_dir, 20 + 17 * i, seed=40 + i),
             SamplingParams(max_tokens=60, threshold=0.5, editing_threshold=[0.0, "off"][i % 2],
                            max_post_steps=4 if i % 2 == 0 else None)) for i in range(4)]
    single = run(make_engine(model_dir), reqs, stagger=1)
    engine = make_engine(model_dir, tensor_parallel_size=2)
    try:
        parallel = run(engine, reqs, stagger=1)
    finally:
        engine.close()
    assert parallel.tokens == single.tokens and parallel.reasons == single.reasons
