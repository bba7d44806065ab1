"""Engine on CUDA, from config-only folders with random (dummy) weights — no tokenizer or
safetensors package needed: Triton kernels give the torch path's greedy tokens; graphed steps
give the eager steps' logits on the same batches (diffusion, editing, AR; three MoE backends)
and are actually replayed; a steady step makes one host sync; the memory profile refuses a
pool that cannot hold one request. (Greedy tokens of graphed vs eager runs are compared
token for token on CPU, tests/unit/test_step_layout.py: on a GPU they agree up to
floating-point reduction order, which random weights' near-ties can expose.)"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from server.core import GenerateRequest, SamplingParams
from server.engine.engine import Engine
from server.engine.llm import engine_config
from server.runner.cuda_graphs import GraphedRunner
from server.tiny import make_tiny_model
from server.transfer import ROUND_TRIPS

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
    opts = {"device": "cuda", "dtype": "float32", "num_pages": 256, "load_format": "dummy",
            "max_num_batched_tokens": 1024} | opts  # 32 blocks: ~30 graphs at start-up
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


@pytest.fixture(scope="module")
def peaky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained-like margins (a sharpened head), so kernels that differ in rounding still pick
    the same tokens; its weights need the safetensors package."""
    pytest.importorskip("safetensors")
    return make_tiny_model(tmp_path_factory.mktemp("peaky"), arch="llada2", seed=1,
                           peaky=True, tokenizer=False)


def test_triton_path_equals_torch_path(peaky: Path) -> None:
    opts = {"load_format": "auto", "enforce_eager": True}
    ref = _run(_engine(peaky, acceptance_backend="torch", moe_backend="torch", **opts))
    eng = _engine(peaky, acceptance_backend="triton", moe_backend="triton", **opts)
    assert eng.info.acceptance_backend == "triton"
    assert _run(eng) == ref


def _serve_comparing(eng: Engine, tol: float, **params: object) -> int:
    """Serve PROMPTS on a graphed engine; each step with logits also runs eagerly on the same
    batch first (same K/V written), and the logits must agree within `tol` of their scale.
    Returns the number of graph replays."""
    runner = eng.runner
    assert isinstance(runner, GraphedRunner) and not runner.failed
    for i, p in enumerate(PROMPTS):
        eng.add_request(GenerateRequest(f"r{i}", tuple(p), SamplingParams(
            max_tokens=64, ignore_eos=True, **params)))  # type: ignore[arg-type]
    while eng.has_work():
        with torch.inference_mode():  # as Engine.step
            _compare_step(eng, runner, tol)
    return runner.replays


def _compare_step(eng: Engine, runner: GraphedRunner, tol: float) -> None:
    """One step as `Engine.step` runs it, plus the eager forward of the same batch first."""
    batch = eng.scheduler.schedule()
    committed: list[int] = []
    if batch.segments:
        eager = runner.inner.forward(batch) if batch.logit_segments else None
        graphed = runner.forward(batch)
        if eager is not None:
            assert isinstance(eager, torch.Tensor) and isinstance(graphed, torch.Tensor)
            scale = eager.float().abs().max().item()
            diff = (graphed.float() - eager.float()).abs().max().item()
            assert diff <= tol * max(scale, 1.0), (diff, scale)
            committed = eng.mode.accept(batch.logit_segments, graphed)()
    eng.scheduler.update(batch, committed)


@pytest.mark.parametrize(("moe", "dtype"), [("triton", "float32"), ("triton", "bfloat16"),
                                            ("torch", "bfloat16"), ("grouped", "bfloat16")])
def test_graphed_logits_match_eager_diffusion(llada: Path, moe: str, dtype: str) -> None:
    eng = _engine(llada, moe_backend=moe, dtype=dtype)
    assert _serve_comparing(eng, 1e-4 if dtype == "float32" else 3e-2) > 50


def test_graphed_logits_match_eager_editing(llada: Path) -> None:
    assert _serve_comparing(_engine(llada, moe_backend="triton"), 1e-4,
                            editing_threshold=0.5) > 50


def test_graphed_logits_match_eager_autoregressive(ling: Path) -> None:
    assert _serve_comparing(_engine(ling, moe_backend="triton"), 1e-4) > 50


def test_torch_moe_loop_turns_graphs_off(llada: Path) -> None:
    """fp32: torch._grouped_mm has no kernel, the torch backend is the loop (host reads)."""
    eng = _engine(llada, moe_backend="torch")
    assert not eng.runner.uses_graphs


def test_steady_step_syncs_once(llada: Path) -> None:
    """After warm-up (graphs captured), a plain step blocks on the GPU once: its read (an
    event wait on a pinned copy, which the sync debug mode does not flag; nothing else may)."""
    eng = _engine(llada, dtype="bfloat16")
    for i, p in enumerate(PROMPTS):
        eng.add_request(GenerateRequest(f"r{i}", tuple(p), SamplingParams(
            max_tokens=400, ignore_eos=True)))
    for _ in range(40):
        eng.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    before = ROUND_TRIPS.count
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            eng.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in seen if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 1 and ROUND_TRIPS.count - before == 1, syncs


def test_profiled_memory_refuses_a_pool_without_room(llada: Path) -> None:
    with pytest.raises(ValueError, match="gpu-memory-utilization"):
        _engine(llada, num_pages=None, gpu_memory_utilization=0.001)
    eng = _engine(llada, num_pages=None, gpu_memory_utilization=0.5)
    assert eng.kv.pool.num_pages * eng.info.page_size >= eng.max_model_len
