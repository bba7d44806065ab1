"""Checkpoint loading: resolve a local dir or hub id, read (sharded) safetensors into the model;
or, with load format "dummy", no file at all: random weights made on the target device."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch

from server.model.config import ModelConfig
from server.model.llada2_moe import Ling2MoeForward
from server.model.moe import ExpertsFn
from server.model.parallel import SINGLE, TPGroup
from server.model.sharding import Shard
from unmask_kernels.moe.ref import experts_loop

log = logging.getLogger(__name__)

PROGRESS_MIN_BYTES = 1 << 30  # show a progress bar from 1 GiB of weights on
_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)"
                     r"\.weight$")
_FUSED = re.compile(r"^(.*)\.(gate_proj|up_proj)\.weight$")
_IGNORED = re.compile(r"(rotary_emb\.inv_freq$|^model\.mtp|\.mtp\.)")
LOAD_FORMATS = ("auto", "dummy")
DUMMY_SEED = 0  # every dummy model is drawn from this seed: two engines get the same weights
DUMMY_STD = 0.02  # a matrix's std when config.json has no initializer_range
_VOCAB_PARALLEL = ("model.word_embeddings.weight", "lm_head.weight")


class CheckpointError(RuntimeError):
    pass


def resolve_model_path(model: str | os.PathLike[str]) -> Path:
    """A local directory, or a hub id resolved through the local Hugging Face cache first
    (works offline), then the hub unless HF_HUB_OFFLINE is set."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(model).startswith((".", "/", "~")):
        raise CheckpointError(f"{model}: not a model directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model), local_files_only=True))
    except Exception as cached_err:  # noqa: BLE001 - fall through to the hub
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            raise CheckpointError(
                f"{model}: not a local directory and not in the Hugging Face cache "
                f"(HF_HUB_OFFLINE is set): {cached_err}"
            ) from None
    try:
        return Path(snapshot_download(str(model)))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{model}: cannot resolve as a directory or hub id: {e}") from None


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{f}: listed in {index.name} but missing")
        return files
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no model.safetensors or *.safetensors files")
    return files


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def load_model(model_dir: Path, cfg: ModelConfig, dtype: torch.dtype, device: torch.device,
               max_positions: int | None = None, tp: TPGroup = SINGLE,
               experts: ExpertsFn = experts_loop, load_format: str = "auto") -> Ling2MoeForward:
    """Under tensor parallelism only this rank's shard of each tensor is read. `experts` runs
    the routed experts (the "moe" kernel registry's choice). `load_format` "dummy" reads no
    weight file: `init_dummy` fills the model on `device` (config.json is all it needs)."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load format {load_format!r}; choose "
                         f"{', '.join(LOAD_FORMATS)}")
    with torch.device("meta"), _default_dtype(dtype):
        model = Ling2MoeForward(cfg, max_positions, tp, experts)  # router weights/bias stay fp32
    model.to_empty(device=device)
    model.reset_rope(device)
    if load_format == "dummy":
        init_dummy(model, cfg, tp, _init_std(model_dir))
        return model.eval()
    _read_checkpoint(model, model_dir, cfg, tp)
    return model.eval()


def _read_checkpoint(model: Ling2MoeForward, model_dir: Path, cfg: ModelConfig,
                     tp: TPGroup) -> None:
    from safetensors import safe_open  # here: a dummy model needs neither package
    from tqdm import tqdm

    shard = Shard(cfg, tp.rank, tp.size)
    sink = _WeightSink(model, shard)
    files = checkpoint_files(model_dir)
    total = sum(f.stat().st_size for f in files)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="loading weights",
               disable=total < PROGRESS_MIN_BYTES)
    with torch.no_grad():
        for f in files:
            with safe_open(f, framework="pt", device="cpu") as st:
                for name in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                    t = shard.read(st, name)
                    if t is None:  # another rank's
                        continue
                    sink.put(name, t, f)
                    bar.update(t.numel() * t.element_size())
    bar.close()
    if cfg.tie_word_embeddings and "lm_head.weight" in sink.pending:
        model.lm_head.weight = model.model.word_embeddings.weight
        sink.pending.discard("lm_head.weight")
    if sink.pending:
        missing = sorted(sink.pending)
        raise CheckpointError(
            f"{model_dir}: checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:5]}"
        )


def _init_std(model_dir: Path) -> float:
    """config.json's `initializer_range` (not a `ModelConfig` field: only dummy weights use
    it), else DUMMY_STD."""
    try:
        value = json.loads((model_dir / "config.json").read_text()).get("initializer_range")
    except (OSError, ValueError):
        value = None
    return float(value) if isinstance(value, int | float) and value > 0 else DUMMY_STD


@torch.no_grad()
def init_dummy(model: Ling2MoeForward, cfg: ModelConfig, tp: TPGroup = SINGLE,
               std: float = DUMMY_STD, seed: int = DUMMY_SEED) -> None:
    """Random weights in place, on the model's device and in each tensor's own dtype (the
    router stays fp32): matrices ~ N(0, std²), norm weights 1, biases and the expert bias 0.
    Each tensor draws from a generator seeded by `seed` and its name alone, so the same seed
    gives the same weights in every build on one device type, and under tensor parallelism
    a replicated tensor (norms, router) is equal on every rank; a sharded one holds the same
    draw on each rank (a valid model, though not the one a single rank would get). The rows
    of the last vocabulary shard past `vocab_size` are 0, as the checkpoint loader pads them."""
    tensors = dict(model.named_parameters()) | {
        n: b for n, b in model.named_buffers() if not n.startswith("rope.")}
    for name, t in sorted(tensors.items()):
        if t.dim() < 2:  # norm weights (…norm.weight / …layernorm.weight), biases, expert bias
            t.fill_(1.0 if name.endswith("norm.weight") else 0.0)
            continue
        g = torch.Generator(device=t.device).manual_seed(
            seed * 1_000_003 + zlib.crc32(name.encode()))
        t.normal_(0.0, std, generator=g)
        if name in _VOCAB_PARALLEL and tp.size > 1:
            first = tp.rank * t.shape[0]  # vocabulary id of this shard's row 0
            t[max(0, cfg.vocab_size - first):] = 0
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.word_embeddings.weight


class _WeightSink:
    """Routes checkpoint tensors into model parameters; tracks what is still unloaded.
    Per-expert keys fill stacked [E, ...] tensors; gate_proj/up_proj fill halves of gate_up_proj."""

    def __init__(self, model: torch.nn.Module, shard: Shard) -> None:
        self.shard = shard
        self.params = dict(model.named_parameters()) | {
            n: b for n, b in model.named_buffers() if not n.startswith("rope.")
        }
        self.pending = set(self.params)
        self.parts: dict[str, set[str]] = {}

    def put(self, name: str, t: torch.Tensor, file: Path) -> None:
        if m := _EXPERT.match(name):
            prefix, proj = m.group(1), m.group(3)
            target = f"{prefix}.w2" if proj == "down_proj" else f"{prefix}.w13"
            stacked = self._param(target, name, file)
            e = self.shard.local_expert(int(m.group(2)))  # Shard.read skipped other ranks'
            if e is None or e >= stacked.shape[0]:
                raise CheckpointError(f"{file.name}: {name}: expert {m.group(2)} >= num_experts "
                                      f"{self.shard.cfg.num_experts}")
            dst = stacked[e] if proj == "down_proj" else self._half(stacked[e], proj)
            self._copy(dst, t, name, file)
            self._part_done(target, f"{e}.{proj}", 2 * stacked.shape[0]
                            if proj != "down_proj" else stacked.shape[0])
        elif m := _FUSED.match(name):
            target = f"{m.group(1)}.gate_up_proj.weight"
            self._copy(self._half(self._param(target, name, file), m.group(2)), t, name, file)
            self._part_done(target, m.group(2), 2)
        elif name in self.params:
            self._copy(self.params[name], t, name, file)
            self.pending.discard(name)
        elif _IGNORED.search(name) or _beyond_layers(name, self.params):
            log.debug("skipping checkpoint tensor %s", name)
        else:
            raise CheckpointError(f"{file.name}: unexpected tensor {name!r}")

    def _param(self, target: str, name: str, file: Path) -> torch.Tensor:
        if target not in self.params:
            raise CheckpointError(f"{file.name}: tensor {name!r} has no place in the model "
                                  f"(expected parameter {target!r})")
        return self.params[target]

    @staticmethod
    def _half(full: torch.Tensor, proj: str) -> torch.Tensor:
        half = full.shape[0] // 2
        return full[:half] if proj == "gate_proj" else full[half:]

    @staticmethod
    def _copy(dst: torch.Tensor, t: torch.Tensor, name: str, file: Path) -> None:
        if tuple(dst.shape) != tuple(t.shape):
            raise CheckpointError(f"{file.name}: tensor {name!r} has shape {tuple(t.shape)}, "
                                  f"model expects {tuple(dst.shape)}")
        dst.copy_(t.to(dst.dtype))

    def _part_done(self, target: str, part: str, num_parts: int) -> None:
        seen = self.parts.setdefault(target, set())
        seen.add(part)
        if len(seen) == num_parts:
            self.pending.discard(target)


def _beyond_layers(name: str, params: dict[str, torch.Tensor]) -> bool:
    """Extra trailing layers (e.g. Ling MTP layers numbered after the decoder) are skipped."""
    m = re.match(r"^model\.layers\.(\d+)\.", name)
    return m is not None and f"model.layers.{m.group(1)}.input_layernorm.weight" not in params
