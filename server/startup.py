"""Start-up decisions that need only the configuration files: the checkpoint's config, device
and dtype, context length, decoding mode, topology and KV sizing. Every rank starts from the
same `StartupPlan` (each computes it from its own flags); `unmask serve --check-config` runs
the same checks and loads no weights. Every inconsistency raises ValueError naming the flag or
file at fault."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from server.config import AR_PAGE_SIZE, DIFFUSION_DEFAULTS, EngineConfig, parse_bytes
from server.core import DEFAULT_MAX_POST_STEPS, EDITING_OFF, Editing, SamplingParams
from server.kv_cache.sizing import MemoryProfile, pool_pages
from server.kv_cache.tensors import KVCache
from server.model.config import ModelConfig
from server.model.loader import resolve_model_path
from server.model.parallel import check_tp_size, local_kv_heads
from server.model.specials import SpecialIds, read_special_ids

log = logging.getLogger(__name__)
CPU_KV_DEFAULT = 512 << 20
BACKEND_NAMES = {"attention": ("auto", "paged", "torch", "flashinfer"),
                 "acceptance": ("auto", "torch", "triton"),
                 "moe": ("auto", "torch", "grouped", "triton")}


@dataclass(frozen=True)
class StartupPlan:
    model_dir: Path
    mcfg: ModelConfig
    specials: SpecialIds
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    block_size: int | None  # diffusion block (== page size); None: autoregressive
    editing: Editing | None  # the LLaDA2.1 editing default of requests that do not choose
    max_post_steps: int  # the post-step budget default (also when editing is off)
    ranks_per_node: int

    @property
    def page_size(self) -> int:
        return self.block_size or AR_PAGE_SIZE

    @property
    def attn_block(self) -> int:
        """Granularity of the block-causal mask: the block, or 1 (causal) for AR."""
        return self.block_size or 1


def resolve_device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(names)}")
    return dev, names[dtype]


def plan_startup(cfg: EngineConfig) -> StartupPlan:
    model_dir = resolve_model_path(cfg.model)
    mcfg = ModelConfig.from_file(model_dir / "config.json", cfg.hf_overrides)
    # the edit ids as the model config has them (after --hf-overrides)
    specials = dataclasses.replace(read_special_ids(model_dir), delete_id=mcfg.delete_token_id,
                                   split_id=mcfg.split_token_id)
    device, dtype = resolve_device_dtype(cfg.device, cfg.dtype)
    for op, chosen in (("attention", cfg.attention_backend),
                       ("acceptance", cfg.acceptance_backend), ("moe", cfg.moe_backend)):
        if chosen not in BACKEND_NAMES[op]:
            raise ValueError(f"unknown --{op}-backend {chosen!r}; choose "
                             f"{', '.join(BACKEND_NAMES[op])}")
    max_model_len = cfg.max_model_len or mcfg.max_context
    if max_model_len > mcfg.max_context:
        raise ValueError(
            f"--max-model-len {max_model_len} exceeds what the model supports "
            f"({mcfg.max_context}: max_position_embeddings"
            + (", × YaRN factor" if mcfg.rope_scaling else "; enable YaRN with --rope-scaling "
               "or --hf-overrides to go further") + ")")
    block: int | None = None
    editing: Editing | None = None
    posts = DEFAULT_MAX_POST_STEPS
    if mcfg.mode == "diffusion":
        if specials.mask_id is None:
            raise ValueError(f"{model_dir}: diffusion checkpoint without a <|mask|> token")
        block = cfg.diffusion.block_size or (
            mcfg.route_block if mcfg.block_routing else
            DIFFUSION_DEFAULTS[mcfg.architecture]["block_size"])
        if block < 1:
            raise ValueError(f"--block-size must be >= 1, got {block}")
        if mcfg.block_routing and block % mcfg.route_block:
            raise ValueError(f"--block-size {block} must be a multiple of the checkpoint's "
                             f"block_size {mcfg.route_block}: its MoE routes whole blocks")
        check_edit_ids(specials, model_dir)
        editing, posts = default_editing(cfg, model_dir, mcfg.levenshtein)
    else:
        if cfg.diffusion.editing_threshold not in (None, EDITING_OFF) or \
                cfg.diffusion.max_post_steps is not None:
            raise ValueError("--editing-threshold/--max-post-steps apply to block-diffusion "
                             f"checkpoints; {model_dir} is autoregressive")
    page_size = block or AR_PAGE_SIZE
    if cfg.scheduler.max_num_batched_tokens < 2 * page_size:
        raise ValueError(f"--max-num-batched-tokens must be >= {2 * page_size} "
                         "(a commit block plus an active block)")
    if not 0 < cfg.cache.gpu_memory_utilization <= 1:
        raise ValueError("--gpu-memory-utilization must be in (0, 1], got "
                         f"{cfg.cache.gpu_memory_utilization}")
    if cfg.load_format not in ("auto", "dummy"):
        raise ValueError(f"unknown --load-format {cfg.load_format!r}; choose auto, dummy")
    if cfg.scheduler.max_running_requests < 1:
        raise ValueError("--max-running-requests must be >= 1")
    ranks_per_node = check_topology(cfg)
    check_tp_size(mcfg, cfg.tensor_parallel_size)
    plan = StartupPlan(model_dir, mcfg, specials, device, dtype, max_model_len, block, editing,
                       posts, ranks_per_node)
    if cfg.cache.num_pages is not None or cfg.cache.kv_cache_memory is not None:
        # a fixed budget is checkable before any device exists; each rank holds its share of
        # the KV heads (one, replicated, beyond the KV-head count)
        pages = kv_pages(cfg, mcfg, cfg.tensor_parallel_size, page_size, dtype, device)
        plan = dataclasses.replace(plan, max_model_len=fit_context(
            max_model_len, cfg.max_model_len is not None, pages, page_size))
    return plan


def check_edit_ids(sp: SpecialIds, model_dir: Path) -> None:
    """LLaDA2.2 edit ids must not be the mask or an EOS id: each has its own meaning."""
    for name, tid in (("delete_token_id", sp.delete_id), ("split_token_id", sp.split_id)):
        if tid is not None and (tid == sp.mask_id or tid in sp.eos_ids):
            raise ValueError(f"{model_dir}: {name} {tid} is also the mask or an EOS id")


def fit_context(max_model_len: int, explicit: bool, num_pages: int, page_size: int) -> int:
    """One request of the context length must fit the KV pool: an explicit --max-model-len
    that does not is refused; the default is lowered to what fits, with a warning."""
    fits = num_pages * page_size
    if fits >= max_model_len:
        return max_model_len
    msg = (f"the KV pool holds {num_pages} pages ({fits} tokens), less than one request of "
           f"the context length {max_model_len}")
    if explicit:
        raise ValueError(f"{msg}: raise --kv-cache-memory/--num-pages or lower "
                         "--max-model-len")
    log.warning("%s: max_model_len lowered to %d", msg, fits)
    return fits


def default_editing(cfg: EngineConfig, model_dir: Path, levenshtein: bool = False
                    ) -> tuple[Editing | None, int]:
    """The engine's LLaDA2.1 editing default and its post-step budget (kept apart: a request
    that turns editing on uses it even when the default is off): the flags, else the
    checkpoint's generation_config.json (`editing_threshold`, `max_post_steps`), else off and
    16 — on LLaDA2.2 (`levenshtein`) else 0.0, its reference's one mode (docs/llada22.md).
    LLaDA2.0 and 2.1 share one architecture, so only the configuration tells a 2.1 one."""
    gen_file = model_dir / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    t = cfg.diffusion.editing_threshold
    if t is None:
        t = gen.get("editing_threshold", 0.0 if levenshtein else EDITING_OFF)
    if t is None:  # a generation config may say null: off
        t = EDITING_OFF
    posts = cfg.diffusion.max_post_steps
    if posts is None:
        posts = gen.get("max_post_steps", DEFAULT_MAX_POST_STEPS)
    try:  # the request-level validation, with the flag's name in the message
        SamplingParams(editing_threshold=t, max_post_steps=posts)
    except ValueError as e:
        raise ValueError(f"--{str(e).replace('_', '-')}") from None
    return (None if t == EDITING_OFF else Editing(float(t), posts)), posts


def kv_pages(cfg: EngineConfig, m: ModelConfig, tp_size: int, page_size: int,
             dtype: torch.dtype, device: torch.device,
             profile: MemoryProfile | None = None) -> int:
    """Pages of the KV pool for one of `tp_size` ranks (holding its share of `m`'s KV heads,
    `local_kv_heads`): `--num-pages`, else `--kv-cache-memory`, else on a GPU what the
    memory `profile` leaves under `--gpu-memory-utilization` (the caller checks that one
    request fits, `check_room`), else a fixed default on CPU."""
    c = cfg.cache
    if c.num_pages is not None:
        if c.num_pages < 1:
            raise ValueError(f"--num-pages must be >= 1, got {c.num_pages}")
        return c.num_pages
    per_page = KVCache.bytes_per_page(m.num_hidden_layers, page_size,
                                      local_kv_heads(m, tp_size), m.head_dim, dtype)
    if c.kv_cache_memory is not None:
        budget = parse_bytes(c.kv_cache_memory)
    elif profile is not None:
        return pool_pages(profile, c.gpu_memory_utilization, per_page)
    elif device.type == "cuda":  # no profile (planning before the weights): free memory
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * c.gpu_memory_utilization)
    else:
        budget = CPU_KV_DEFAULT
    pages = budget // per_page
    if pages < 1:
        raise ValueError(f"KV budget of {budget} bytes holds no page ({per_page} bytes each)")
    return pages


def parse_addr(addr: str) -> tuple[str, int]:
    """--dist-init-addr 'HOST:PORT' -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--dist-init-addr must be HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


def check_topology(cfg: EngineConfig) -> int:
    """Ranks per node; ValueError naming the flag when the topology is inconsistent."""
    n, nodes, k = cfg.tensor_parallel_size, cfg.nnodes, cfg.node_rank
    if nodes < 1:
        raise ValueError("--nnodes must be >= 1")
    if not 0 <= k < nodes:
        raise ValueError(f"--node-rank {k} must be in 0..{nodes - 1} (--nnodes {nodes})")
    if n % nodes:
        raise ValueError(f"--tensor-parallel-size {n} (ranks over all nodes) must be a "
                         f"multiple of --nnodes {nodes}: every node runs the same number")
    if nodes > 1 and not cfg.dist_init_addr:
        raise ValueError("--nnodes > 1 needs --dist-init-addr HOST:PORT (node 0's address)")
    if cfg.dist_init_addr:
        parse_addr(cfg.dist_init_addr)
    return n // nodes
