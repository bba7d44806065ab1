"""Engine on CUDA, from config-only folders with random (dummy) weights — no tokenizer or
safetensors package needed: Triton kernels give the torch path's greedy tokens; CUDA graphs
give the eager tokens for diffusion and AR and are actually replayed; a steady step makes one
host sync; the memory profile refuses a pool that cannot hold one request."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from server.core import GenerateRequest, SamplingParams
from server.engine.engine import Engine
from server.engine.llm import engine_config
from server.tiny import make_tiny_model

pytestmark = pytest.mark.gpu
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12] * 40, [13], list(range(100, 170))]


@pytest.fixture(scope="module")
def llada(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("llada"), arch="llada2", weights=False,
                           tokenizer=False)


@pytest.fixture(scope="module")
def ling(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("ling"), arch="ling2", weights=False,
                           tokenizer=False)


def _engine(model: Path, **opts: object) -> Engine:
    opts = {"device": "cuda", "dtype": "float32", "num_pages": 256, "load_format": "dummy"} | opts
    return Engine(engine_config(str(model), **opts))


def _run(eng: Engine, max_tokens: int = 64, **params: object) -> list[list[int]]:
    out: dict[str, list[int]] = {}
    for i, p in enumerate(PROMPTS):
        eng.add_request(GenerateRequest(f"r{i}", tuple(p), SamplingParams(
            max_tokens=max_tokens, ignore_eos=True, **params)))  # type: ignore[arg-type]
    while eng.has_work():
        for o in eng.step().outputs:
            out.setdefault(o.rid, []).extend(o.new_token_ids)
    return [out[f"r{i}"] for i in range(len(PROMPTS))]


def test_triton_path_equals_torch_path(llada: Path) -> None:
    ref = _run(_engine(llada, acceptance_backend="torch", moe_backend="torch",
                       enforce_eager=True))
    eng = _engine(llada, acceptance_backend="triton", moe_backend="triton", enforce_eager=True)
    assert eng.info.acceptance_backend == "triton"
    assert _run(eng) == ref


@pytest.mark.parametrize("moe", ["triton", "torch", "grouped"])
def test_cuda_graphs_equal_eager_diffusion(llada: Path, moe: str) -> None:
    eager = _run(_engine(llada, moe_backend=moe, enforce_eager=True))
    eng = _engine(llada, moe_backend=moe)
    graphed = _run(eng)
    runner = eng.runner
    assert runner.uses_graphs and runner.replays > 0  # type: ignore[attr-defined]
    assert not runner.failed  # type: ignore[attr-defined]
    assert graphed == eager


def test_cuda_graphs_equal_eager_editing(llada: Path) -> None:
    eager = _run(_engine(llada, enforce_eager=True), editing_threshold=0.5)
    assert _run(_engine(llada), editing_threshold=0.5) == eager


def test_cuda_graphs_equal_eager_autoregressive(ling: Path) -> None:
    eager = _run(_engine(ling, enforce_eager=True), max_tokens=24)
    eng = _engine(ling)
    assert _run(eng, max_tokens=24) == eager
    assert eng.runner.replays > 0  # type: ignore[attr-defined]


def test_steady_step_syncs_once(llada: Path) -> None:
    """After warm-up (graphs captured), a plain step blocks on the GPU exactly once."""
    eng = _engine(llada, dtype="bfloat16")
    for i, p in enumerate(PROMPTS):
        eng.add_request(GenerateRequest(f"r{i}", tuple(p), SamplingParams(
            max_tokens=400, ignore_eos=True)))
    for _ in range(40):
        eng.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            eng.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in seen if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, syncs


def test_profiled_memory_refuses_a_pool_without_room(llada: Path) -> None:
    with pytest.raises(ValueError, match="gpu-memory-utilization"):
        _engine(llada, num_pages=None, gpu_memory_utilization=0.001)
    eng = _engine(llada, num_pages=None, gpu_memory_utilization=0.5)
    assert eng.kv.pool.num_pages * eng.info.page_size >= eng.max_model_len
