"""Rank 0's side of tensor parallelism: start this node's ranks 1..k-1, accept the other nodes'
ranks (`--nnodes`), join the process group, load this rank's shard, and `TensorParallelRunner`,
which sends each step's ForwardBatch to every rank before running its own shard of the forward.
Rank 0 alone schedules, allocates pages (so page ids agree on every rank) and computes logits."""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch

from server.config import EngineConfig
from server.core import Batch
from server.distributed.channel import WorkerPool, parse_addr
from server.distributed.node import check_topology, control_listener
from server.distributed.worker import RankSpec, fb_to, init_group
from server.model.config import ModelConfig
from server.model.llada2_moe import Ling2MoeForward
from server.model.loader import load_model
from server.model.moe import set_moe_backend
from server.model.parallel import TPGroup, check_tp_size
from server.runner.attention import AttentionBackend, KVCache, create_backend
from server.runner.forward_batch import build_forward_batch
from server.runner.model_runner import ModelRunner

log = logging.getLogger(__name__)
TIMEOUT_S = 600.0  # process-group join and per-collective limit

NumPages = Callable[[ModelConfig, torch.dtype, torch.device], int]


class TensorParallelRunner(ModelRunner):
    def __init__(self, model: Ling2MoeForward, kv: KVCache, backend: AttentionBackend,
                 attn_block: int, device: torch.device, workers: WorkerPool) -> None:
        super().__init__(model, kv, backend, attn_block, device)
        self.workers = workers
        self._closed = False

    @torch.inference_mode()
    def forward(self, batch: Batch) -> torch.Tensor:
        if dead := self.workers.dead():
            raise RuntimeError(f"tensor-parallel rank(s) {dead} exited")
        fb = build_forward_batch(batch, self.kv.page_size, self.attn_block, torch.device("cpu"))
        self.workers.broadcast(("step", fb))
        fb = fb_to(fb, self.device)
        return self.model.compute_logits(self.hidden(fb)[fb.logits_indices])  # [R, V]

    def close(self) -> None:
        """Stop the other ranks and leave the process group (idempotent)."""
        if self._closed:
            return
        self._closed = True
        import torch.distributed as dist

        self.workers.stop()
        if dist.is_initialized():
            dist.destroy_process_group()


def start_tensor_parallel(cfg: EngineConfig, model_dir: Path, mcfg: ModelConfig,
                          dtype: torch.dtype, device: torch.device, max_positions: int,
                          page_size: int, attn_block: int, num_pages: NumPages,
                          ) -> tuple[TensorParallelRunner, int]:
    """Runner of rank 0 of `cfg.tensor_parallel_size` ranks, and the page count every rank
    allocates (sized by rank 0 for its own share of the KV heads)."""
    import torch.distributed as dist

    n = cfg.tensor_parallel_size
    check_tp_size(mcfg, n)
    per_node = check_topology(cfg)  # ranks per node; this node holds ranks 0..per_node-1
    cuda = device.type == "cuda"
    first = (device.index or 0) if cuda else 0
    if cuda:
        if first + per_node > torch.cuda.device_count():
            raise ValueError(f"{per_node} ranks per node need GPUs {first}.."
                             f"{first + per_node - 1}; {torch.cuda.device_count()} visible")
        device = torch.device("cuda", first)
        torch.cuda.set_device(device)
        threads = None
    else:  # the ranks share the cores
        threads = max(1, (cfg.cpu_threads or os.cpu_count() or 1) // per_node)
        torch.set_num_threads(threads)
    # one node: a store on a free local port; several: on --dist-init-addr, control on PORT + 1
    host, port = parse_addr(cfg.dist_init_addr) if cfg.dist_init_addr else ("127.0.0.1", 0)
    store = dist.TCPStore(host, port, n, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=TIMEOUT_S))
    # every node is assumed alike: rank r uses device (first + r % per_node) of its node
    specs = [RankSpec(
        model_dir=str(model_dir), rank=r, world_size=n, store_host=host, store_port=store.port,
        backend="nccl" if cuda else "gloo",
        device=f"cuda:{first + r % per_node}" if cuda else "cpu",
        dtype=str(dtype).removeprefix("torch."), max_positions=max_positions,
        page_size=page_size, attn_block=attn_block, attention_backend=cfg.attention_backend,
        moe_backend=cfg.moe_backend, cpu_threads=threads, timeout_s=TIMEOUT_S,
        hf_overrides=cfg.hf_overrides) for r in range(n)]
    listener = control_listener(port + 1) if per_node < n else None
    workers = WorkerPool(per_node - 1)
    try:
        if listener is not None:
            log.info("tensor parallel: waiting for ranks %d..%d to connect to port %d",
                     per_node, n - 1, port + 1)
            workers.accept(listener, range(per_node, n), TIMEOUT_S)
            listener.close()
        workers.send_each(specs[1:])
        workers.expect("hello")  # imports done, joining the group
        init_group(specs[0], store)
        model = load_model(model_dir, mcfg, dtype, device, max_positions, TPGroup(0, n))
        moe = set_moe_backend(model, cfg.moe_backend, device.type)
        local = dataclasses.replace(mcfg, num_key_value_heads=mcfg.num_key_value_heads // n)
        pages = num_pages(local, dtype, device)
        workers.broadcast(("pages", pages))
        kv = KVCache(mcfg.num_hidden_layers, pages, page_size, local.num_key_value_heads,
                     mcfg.head_dim, dtype, device)
        backend = create_backend(cfg.attention_backend, device)
        workers.expect("ready")
    except BaseException:
        if listener is not None:
            listener.close()
        workers.stop(timeout=2)
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    runner = TensorParallelRunner(model, kv, backend, attn_block, device, workers)
    atexit.register(runner.close)
    log.info("tensor parallel: %d ranks on %d node(s) (%s), %d of %d KV heads and %d of %d "
             "experts per rank; moe backend %s; eager forward (no CUDA graphs)", n, cfg.nnodes,
             specs[0].backend,
             local.num_key_value_heads, mcfg.num_key_value_heads, mcfg.num_experts // n,
             mcfg.num_experts, moe)
    return runner, pages
