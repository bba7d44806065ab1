"""Tensor-parallel model layers on CPU: TP=2 and TP=4 ranks (gloo, one subprocess each, this
file run as a script) load their shards of a tiny checkpoint and run one forward; rank 0's
gathered logits equal TP=1's. TP=4 on the tiny shape (4 Q heads, 2 KV heads) replicates each KV
head on two ranks; the odd vocabulary pads the last embedding/lm_head shard."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from server.core import Batch, GenerateRequest, GreedyRows, SamplingParams, Segment, Sequence
from server.kv_cache.tensors import KVCache
from server.model.config import ModelConfig
from server.model.loader import load_model
from server.model.parallel import (
    SINGLE,
    TPGroup,
    check_tp_size,
    kv_head_range,
    local_kv_heads,
    vocab_rows,
)
from server.runner.attention import TorchAttention
from server.runner.forward_batch import build_forward_batch
from server.runner.model_runner import ModelRunner
from server.tiny import make_tiny_model

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]
PAGE = 32  # page size = LLaDA2 block size
N = 40  # prompt tokens: one full page and part of the next
SIZES = (2, 4)
RANK_TIMEOUT_S = 120


def prompt(vocab: int) -> list[int]:
    """N ids including both ends of the vocabulary and every shard boundary at TP 2 and 4."""
    edges = {0, vocab - 1} | {k * vocab_rows(vocab, n) + d for n in SIZES for k in range(1, n)
                              for d in (-1, 0)}
    rest = torch.randint(0, vocab, (N - len(edges),), generator=torch.Generator().manual_seed(7))
    return sorted(edges) + rest.tolist()


def run_one(model_dir: Path, tp: TPGroup, never: int | None = None
            ) -> tuple[torch.nn.Module, torch.Tensor, GreedyRows | None]:
    """Load this rank's shard, forward the prompt once; (model, compute_logits of every row,
    greedy_rows of every row with `never` left out; None without `never`)."""
    cfg = ModelConfig.from_file(model_dir / "config.json")
    model = load_model(model_dir, cfg, torch.float32, CPU, 256, tp=tp)
    kv = KVCache(cfg.num_hidden_layers, 2, PAGE, local_kv_heads(cfg, tp.size), cfg.head_dim,
                 torch.float32, CPU)
    attn_block = PAGE if cfg.mode == "diffusion" else 1
    runner = ModelRunner(model, kv, TorchAttention(), attn_block, CPU)
    ids = prompt(cfg.vocab_size)
    seq = Sequence(req=GenerateRequest("x", tuple(ids), SamplingParams()), tokens=list(ids),
                   block=None, block_start=N, page_table=[0, 1])
    fb = build_forward_batch(Batch([Segment(seq, 0, N, 0, cache_end=N)], N), PAGE, attn_block,
                             CPU)
    with torch.inference_mode():
        rows = runner.hidden(fb)[fb.logits_indices]  # [N, H]
        logits = model.compute_logits(rows)  # [N, V]
        return model, logits, None if never is None else model.greedy_rows(rows, never)


def rank_main(rank: int, size: int, port: int, jobs: dict[str, str], out: Path) -> None:
    """One rank: join the gloo group; per job save its logits and its shard of the split
    tensors (rank 0's logits are the gathered [N, V]; the others' the empty placeholder)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=size, timeout=timedelta(seconds=RANK_TIMEOUT_S))
    try:
        for name, (model_dir, never) in jobs.items():
            model, logits, greedy = run_one(Path(model_dir), TPGroup(rank, size), never)
            attn = model.model.layers[0].attention
            torch.save({
                "logits": logits,
                "greedy": None if greedy is None else (greedy.token, greedy.best, greedy.lse),
                "emb": model.model.word_embeddings.weight.detach(),
                "head": model.lm_head.weight.detach(),
                "tied": model.lm_head.weight is model.model.word_embeddings.weight,
                "qkv": attn.query_key_value.weight.detach(),
                "nh": attn.nh, "nkv": attn.nkv,
                "experts": model.model.layers[1].mlp.experts.w13.shape[0],
            }, out / f"{name}-tp{size}-r{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(size: int, jobs: dict[str, tuple[Path, int]], out: Path) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = json.dumps({"size": size, "port": port, "out": str(out),
                       "jobs": {k: (str(d), n) for k, (d, n) in jobs.items()}})
    procs = [subprocess.Popen([sys.executable, __file__, str(r), args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(size)]
    try:
        for r, p in enumerate(procs):
            log, _ = p.communicate(timeout=RANK_TIMEOUT_S)
            assert p.returncode == 0, f"TP={size} rank {r} failed:\n{log.decode()[-4000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def odd_vocab(tiny_llada2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny LLaDA2 with V = 64k + 3 rows: neither TP 2 nor TP 4 divides it, so the last
    shard is padded."""
    vocab = ModelConfig.from_file(tiny_llada2 / "config.json").vocab_size + 3
    return make_tiny_model(tmp_path_factory.mktemp("odd_vocab"), arch="llada2", seed=5,
                           overrides={"vocab_size": vocab})


@pytest.fixture(scope="module")
def tied_ling2(tiny_ling2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny Ling-2.0 (causal) with tie_word_embeddings and no lm_head.weight in the file."""
    d = tmp_path_factory.mktemp("tied") / "m"
    shutil.copytree(tiny_ling2, d)
    cfg = json.loads((d / "config.json").read_text()) | {"tie_word_embeddings": True}
    (d / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(d / "model.safetensors")
    del tensors["lm_head.weight"]
    save_file(tensors, d / "model.safetensors")
    return d


@pytest.fixture(scope="module")
def tp_runs(odd_vocab: Path, tied_ling2: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[tuple[str, int, int], dict]:
    """(job, tp, rank) → what that rank saved; TP=1 runs in this process as rank 0 of 1."""
    jobs = {"odd_vocab": odd_vocab, "tied": tied_ling2}
    out = tmp_path_factory.mktemp("tp_runs")
    runs: dict[tuple[str, int, int], dict] = {}
    nevers = {}
    for name, d in jobs.items():
        model, logits, _ = run_one(d, SINGLE)
        runs[name, 1, 0] = {"logits": logits, "tied": model.lm_head.weight
                            is model.model.word_embeddings.weight}
        nevers[name] = int(logits[0].argmax())  # leaving it out changes row 0's answer
    for size in SIZES:
        spawn(size, {k: (d, nevers[k]) for k, d in jobs.items()}, out)
        for name in jobs:
            for r in range(size):
                runs[name, size, r] = torch.load(out / f"{name}-tp{size}-r{r}.pt")
    return runs


@pytest.mark.parametrize("job", ["odd_vocab", "tied"])
@pytest.mark.parametrize("size", SIZES)
def test_tp_logits_match_single_rank(tp_runs: dict, job: str, size: int) -> None:
    ref, ours = tp_runs[job, 1, 0]["logits"], tp_runs[job, size, 0]["logits"]
    assert ref.dtype == ours.dtype == torch.float32 and ours.shape == ref.shape == (N, ref.shape[1])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    for r in range(1, size):  # the other ranks' placeholder
        assert tp_runs[job, size, r]["logits"].shape == (0, ref.shape[1])


@pytest.mark.parametrize("job", ["odd_vocab", "tied"])
@pytest.mark.parametrize("size", SIZES)
def test_greedy_rows_match_the_full_logits(tp_runs: dict, job: str, size: int) -> None:
    """What rank 0 gathers instead of [R, V/N] per rank: the argmax, its logit and the
    log-sum-exp of each row, with one token left out (as the mask id is)."""
    ref = tp_runs[job, 1, 0]["logits"].clone()  # [N, V]
    never = int(ref[0].argmax())
    ref[:, never] = -torch.inf
    token, best, lse = tp_runs[job, size, 0]["greedy"]
    assert torch.equal(token, ref.argmax(-1)) and never not in token.tolist()
    torch.testing.assert_close(best, ref.max(-1).values, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lse, ref.logsumexp(-1), rtol=1e-4, atol=1e-4)
    rows = GreedyRows(token, best, lse)
    torch.testing.assert_close(rows.confidence, ref.softmax(-1).max(-1).values)


@pytest.mark.parametrize("size", SIZES)
def test_vocab_rows_are_sharded_and_padded(tp_runs: dict, odd_vocab: Path, size: int) -> None:
    w = load_file(odd_vocab / "model.safetensors")
    for name, key in (("emb", "model.word_embeddings.weight"), ("head", "lm_head.weight")):
        full = w[key]  # [V, H]
        vp = vocab_rows(full.shape[0], size)
        shards = [tp_runs["odd_vocab", size, r][name] for r in range(size)]
        assert all(s.shape == (vp, full.shape[1]) for s in shards)
        rows = torch.cat(shards)  # [size·Vp, H]
        assert torch.equal(rows[: full.shape[0]], full)
        assert size * vp > full.shape[0] and not rows[full.shape[0]:].any()  # zero padding


@pytest.mark.parametrize("size", SIZES)
def test_tied_shards_share_one_tensor(tp_runs: dict, tied_ling2: Path, size: int) -> None:
    emb = load_file(tied_ling2 / "model.safetensors")["model.word_embeddings.weight"]
    vp = vocab_rows(emb.shape[0], size)
    assert tp_runs["tied", 1, 0]["tied"]
    for r in range(size):
        got = tp_runs["tied", size, r]
        assert got["tied"] and torch.equal(got["emb"], emb[r * vp : (r + 1) * vp])


def test_tp4_replicates_kv_heads(tp_runs: dict, odd_vocab: Path) -> None:
    """TP=4, 4 Q heads, 2 KV heads: rank r holds Q head r and KV head r // 2."""
    cfg = ModelConfig.from_file(odd_vocab / "config.json")
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    qkv = load_file(odd_vocab / "model.safetensors")[
        "model.layers.0.attention.query_key_value.weight"]  # [(nh + 2·nkv)·hd, H]
    heads = qkv.view(nh + 2 * nkv, hd, -1)
    for r in range(4):
        got = tp_runs["odd_vocab", 4, r]
        assert (got["nh"], got["nkv"], got["experts"]) == (1, 1, cfg.num_experts // 4)
        want = torch.cat([heads[r], heads[nh + r // 2], heads[nh + nkv + r // 2]])
        assert torch.equal(got["qkv"], want)


def test_check_tp_size_rules(tiny_llada2: Path) -> None:
    tiny = ModelConfig.from_file(tiny_llada2 / "config.json")  # nh 4, nkv 2, 8 experts
    for ok in (1, 2, 4):
        check_tp_size(tiny, ok)
    with pytest.raises(ValueError, match=r"3 must divide num_attention_heads=4.*"
                                         r"num_key_value_heads=2 or be a multiple of it"):
        check_tp_size(tiny, 3)
    with pytest.raises(ValueError, match=r"8 must divide num_attention_heads=4"):
        check_tp_size(tiny, 8)
    with pytest.raises(ValueError, match=">= 1"):
        check_tp_size(tiny, 0)
    # LLaDA2.0-mini's heads (16 Q, 4 KV): TP 8 and 16 replicate KV heads, TP 6 is refused
    mini = dataclasses.replace(tiny, num_attention_heads=16, num_key_value_heads=4,
                               num_experts=256, intermediate_size=5120,
                               moe_intermediate_size=512)
    check_tp_size(mini, 8)
    check_tp_size(mini, 16)
    assert [kv_head_range(mini, r, 8) for r in range(8)] == [range(r // 2, r // 2 + 1)
                                                             for r in range(8)]
    assert kv_head_range(mini, 1, 2) == range(2, 4) and local_kv_heads(mini, 16) == 1
    with pytest.raises(ValueError, match="num_key_value_heads=4 or be a multiple"):
        check_tp_size(dataclasses.replace(mini, num_attention_heads=24, num_experts=24), 6)


if __name__ == "__main__":  # one rank of `spawn`: argv = rank, JSON arguments
    a = json.loads(sys.argv[2])
    rank_main(int(sys.argv[1]), a["size"], a["port"], a["jobs"], Path(a["out"]))
