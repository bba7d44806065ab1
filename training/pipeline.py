"""The whole recipe in one call: data → tokenizer → AR pretraining → AR SFT (the twin) → WSD
conversion to block diffusion → diffusion SFT (complementary masking, CAP; and a no-CAP copy
for comparison) → top-k merge → export of both checkpoints."""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from server.model.llada2_moe import Ling2MoeForward
from server.tiny.tokenizer import train_bpe, write_tokenizer_files
from training import data
from training.datasets import Packed, SftRow, code_docs, pack, sft_batch, sft_batches, sft_rows
from training.model import ExpertBalancer, build, save_weights, training_config
from training.objectives import ar_loss, complementary, diffusion_loss, sample_masks
from training.tokenizer import ChatRenderer


@dataclass
class Scale:
    shape: dict
    vocab_size: int = 4096
    corpus_chars: int = 3_000_000
    seq_len: int = 128
    batch: int = 16
    sft_batch: int = 16
    ar_steps: int = 400
    ar_sft_steps: int = 200
    # WSD block sizes and the share of conversion steps each gets; 0 = whole sequence (MDLM)
    wsd_blocks: tuple[int, ...] = (1, 4, 32, 0, 32)
    wsd_share: tuple[float, ...] = (0.1, 0.15, 0.2, 0.2, 0.35)
    convert_steps: int = 400
    noise_until: float = 0.1  # Gaussian noise on masked embeddings over this first share
    noise_std: float = 0.1
    sft_steps: int = 300
    sft_block: int = 32
    mask_band: tuple[float, float] = (0.2, 0.9)  # conversion
    # SFT reaches t = 1: every block's first denoise step sees its response fully masked
    sft_band: tuple[float, float] = (0.3, 1.0)
    cap_lambda: float = 0.5
    lr: float = 3e-3
    sft_lr: float = 1e-3
    eval_every: int = 50
    merge_k: int = 3
    per_func: int = 6
    per_tool: int = 150
    # wall-clock caps per stage in seconds (None: steps only); the no-CAP SFT copies the
    # CAP run's step count so the comparison is like for like
    caps: dict = field(default_factory=dict)
    seed: int = 0
    export_dtype: str = "float32"


FULL_SHAPE = dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_experts=8,
                  num_experts_per_tok=2, n_group=1, topk_group=1, num_shared_experts=1,
                  max_position_embeddings=4096, num_hidden_layers=3)
TOY_SHAPE = dict(hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_experts=4,
                 num_experts_per_tok=2, n_group=1, topk_group=1, num_shared_experts=1,
                 max_position_embeddings=1024, num_hidden_layers=2)
SCALES = {
    "full": Scale(FULL_SHAPE, batch=8, corpus_chars=6_000_000, ar_steps=100_000,
                  ar_sft_steps=100_000, convert_steps=100_000, sft_steps=100_000, sft_batch=4,
                  eval_every=50, per_tool=100,
                  caps={"ar_pretrain": 450, "ar_sft": 600, "convert": 900, "sft_cap": 1500}),
    "toy": Scale(TOY_SHAPE, vocab_size=400, corpus_chars=60_000, seq_len=32, batch=4,
                 sft_batch=4, ar_steps=12, ar_sft_steps=6, convert_steps=10,
                 sft_steps=8, eval_every=3, per_func=1, per_tool=6, lr=1e-2, sft_lr=1e-2,
                 sft_block=8),
}


Snapshot = tuple[float, int, dict]  # (validation loss, step, state dict)


@dataclass
class Log:
    path: Path | None
    records: list[dict] = field(default_factory=list)

    def __call__(self, **rec: object) -> None:
        self.records.append(rec)
        line = json.dumps(rec)
        print(line, flush=True)
        if self.path:
            with self.path.open("a") as f:
                f.write(line + "\n")


def lr_at(progress: float, peak: float) -> float:
    """Warmup–stable–decay over training progress in [0, 1]: 5% warmup, flat, linear decay to
    10% over the last 20%."""
    if progress < 0.05:
        return peak * max(progress, 0.005) / 0.05
    if progress < 0.8:
        return peak
    return peak * (1 - 0.9 * (progress - 0.8) / 0.2)


def train(model: Ling2MoeForward, steps: int, lr: float, loss_fn: Callable[[float], torch.Tensor],
          val_fn: Callable[[], float], sc: Scale, log: Log, stage: str,
          keep: list[Snapshot] | None = None, cap_s: float | None = None,
          keep_at: set[int] | None = None) -> list[float]:
    """AdamW loop. Progress = max(step / steps, elapsed / cap_s): the LR schedule (and the
    caller's loss schedule) follow it, and the stage ends at 1, so a wall-clock cap still
    completes the decay. Every `eval_every` steps: validation loss, and (if `keep`) a snapshot
    for the top-k merge: the best k by validation loss, or exactly the steps in `keep_at`.
    Returns the training losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    bal = ExpertBalancer(model)
    losses: list[float] = []
    t0 = time.monotonic()
    step, progress = 0, 0.0
    while progress < 1.0:
        for grp in opt.param_groups:
            grp["lr"] = lr_at(progress, lr)
        model.train()
        loss = loss_fn(progress)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bal.step()
        losses.append(float(loss.detach()))
        step += 1
        elapsed = time.monotonic() - t0
        progress = max(step / steps, elapsed / cap_s if cap_s else 0.0)
        if step % sc.eval_every == 0 or progress >= 1.0:
            val = val_fn()
            recent = losses[-sc.eval_every:]
            log(stage=stage, step=step, loss=round(sum(recent) / len(recent), 4),
                val=round(val, 4), s=round(elapsed, 1))
            if keep is not None and (keep_at is None or step in keep_at):
                keep.append((val, step, copy.deepcopy(model.state_dict())))
                if keep_at is None:  # only the top-k by validation loss are held
                    keep.sort(key=lambda x: x[0])
                    del keep[sc.merge_k:]
    return losses


def merge_top_k(model: Ling2MoeForward, keep: list[Snapshot], k: int
                ) -> tuple[list[float], list[int]]:
    """Average the k snapshots with the lowest validation loss into `model`; returns their
    validation losses and steps."""
    best = sorted(keep, key=lambda x: x[0])[:k]
    avg = {n: sum(s[n].float() for _, _, s in best) / len(best) for n in best[0][2]}
    model.load_state_dict(avg)
    return [v for v, _, _ in best], [st for _, st, _ in best]


def run(out: Path, scale: str = "full", work: Path | None = None, log_path: Path | None = None,
        threads: int = 2) -> dict:
    """Train both models and export them under `out` (llada2/ and ling2/); the no-CAP
    diffusion checkpoint for comparison goes to `work`. Returns a summary."""
    torch.set_num_threads(threads)
    sc = SCALES[scale]
    work = work or out / "_work"
    t_start = time.monotonic()
    log = Log(log_path)
    g = torch.Generator().manual_seed(sc.seed)
    rng = random.Random(sc.seed)

    # data and tokenizer
    chat_train, chat_val = data.split(data.chat_examples(sc.seed, sc.per_func, sc.per_tool),
                                      sc.seed, 0.1)
    docs_train, docs_val = data.split(data.stdlib_corpus(sc.corpus_chars, sc.seed), sc.seed, 0.05)
    bootstrap = train_bpe(docs_train[:50], 512)
    renderer = ChatRenderer(bootstrap)
    chat_text = [renderer.render(e.messages, e.tools) for e in chat_train]
    tok = train_bpe(docs_train + code_docs(1) + chat_text, sc.vocab_size)
    renderer = ChatRenderer(tok)
    eos, mask_id = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|mask|>")
    vocab = -(-tok.get_vocab_size() // 64) * 64

    def chat_text_final(r: ChatRenderer) -> list[str]:
        return [r.render(e.messages, e.tools) for e in chat_train]

    def enc_docs(texts: list[str]) -> list[list[int]]:
        return [e.ids + [eos] for e in tok.encode_batch(texts)]

    # the rendered training conversations join the corpus (twice): at this budget the chat
    # format must be seen before SFT; validation stays pure held-out stdlib code
    pre_train = pack(enc_docs(docs_train + code_docs(3) + 2 * chat_text_final(renderer)),
                     sc.seq_len)
    pre_val = pack(enc_docs(docs_val), sc.seq_len)
    pre_val = Packed(pre_val.ids[: 2 * sc.batch], pre_val.doc[: 2 * sc.batch])
    sft_train, sft_val = sft_rows(chat_train, renderer), sft_rows(chat_val, renderer)
    log(stage="data", pretrain_rows=len(pre_train.ids), pretrain_tokens=pre_train.ids.numel(),
        sft_train=len(sft_train), sft_val=len(sft_val), vocab=vocab, corpus=data.corpus_note())

    def pre_batch() -> Packed:
        idx = torch.randint(len(pre_train.ids), (sc.batch,), generator=g)
        return Packed(pre_train.ids[idx], pre_train.doc[idx])

    shape = dict(sc.shape)
    cfg_ar = training_config("ling2", vocab, eos, shape)
    cfg_dm = training_config("llada2", vocab, eos, shape)

    # 1. AR pretraining
    ar = build(cfg_ar, sc.seed)

    @torch.no_grad()
    def ar_val_pre() -> float:
        ar.eval()
        return float(ar_loss(ar, pre_val.ids, pre_val.doc, torch.ones_like(pre_val.ids,
                                                                             dtype=torch.bool)))

    def ar_pre_loss(p: float) -> torch.Tensor:
        b = pre_batch()
        return ar_loss(ar, b.ids, b.doc, torch.ones_like(b.ids, dtype=torch.bool))

    summary: dict = {"scale": scale, "config": asdict(sc)}
    summary["ar_pretrain"] = train(ar, sc.ar_steps, sc.lr, ar_pre_loss, ar_val_pre, sc, log,
                                   "ar_pretrain", cap_s=sc.caps.get("ar_pretrain"))
    base = copy.deepcopy(ar.state_dict())

    # 2. AR SFT: the twin sees the same SFT data with the next-token loss
    sft_groups: list[list[SftRow]] = []

    def next_sft() -> list[SftRow]:
        if not sft_groups:
            sft_groups.extend(sft_batches(sft_train, sc.sft_batch, rng))
        return sft_groups.pop()

    val_batches = [sft_batch(sft_val[i : i + sc.sft_batch], eos)
                   for i in range(0, min(len(sft_val), 2 * sc.sft_batch), sc.sft_batch)]

    @torch.no_grad()
    def ar_val_sft() -> float:
        ar.eval()
        return sum(float(ar_loss(ar, b.ids, b.doc, b.ar_weight)) for b in val_batches) / len(
            val_batches)

    def ar_sft_loss(p: float) -> torch.Tensor:
        b = sft_batch(next_sft(), eos)
        return ar_loss(ar, b.ids, b.doc, b.ar_weight)

    keep_ar: list[Snapshot] = []
    summary["ar_sft"] = train(ar, sc.ar_sft_steps, sc.sft_lr, ar_sft_loss, ar_val_sft, sc, log,
                              "ar_sft", keep_ar, cap_s=sc.caps.get("ar_sft"))
    summary["ar_merged_from"], summary["ar_merged_steps"] = merge_top_k(ar, keep_ar, sc.merge_k)
    summary["ar_val_merged"] = ar_val_sft()
    ar_dir = out / "ling2"
    _export(ar, cfg_ar, ar_dir, tok, "ling2", eos, mask_id, sc.export_dtype)

    # 3. WSD conversion to block diffusion, starting from the AR weights
    dm = build(cfg_dm, sc.seed)
    dm.load_state_dict(base)
    bounds = _wsd_bounds(sc)

    def block_at(p: float) -> int:
        b = next((bs for bs, end in bounds if p < end), bounds[-1][0])
        return b or sc.seq_len

    def convert_loss(p: float) -> torch.Tensor:
        b = pre_batch()
        blk = block_at(p)
        maskable = torch.ones_like(b.ids, dtype=torch.bool)
        m, t = sample_masks(maskable, blk, *sc.mask_band, g)
        std = sc.noise_std * (1 - p / sc.noise_until) if p < sc.noise_until else 0.0
        return diffusion_loss(dm, b.ids, b.doc, m, t, mask_id, blk, maskable,
                              noise_std=std, g=g).loss

    def dm_val_pre() -> float:
        return _dm_val(dm, [(pre_val.ids, pre_val.doc, torch.ones_like(pre_val.ids,
                                                                       dtype=torch.bool))],
                       mask_id, sc)

    summary["wsd"] = {"blocks": bounds}
    summary["convert"] = train(dm, sc.convert_steps, sc.lr, convert_loss, dm_val_pre, sc, log,
                               "convert", cap_s=sc.caps.get("convert"))
    converted = copy.deepcopy(dm.state_dict())

    # 4. diffusion SFT: complementary masking; with CAP (shipped) and without (comparison)
    val_sets = [(b.ids, b.doc, b.maskable) for b in val_batches]
    for name, lam, target in (("sft_cap", sc.cap_lambda, out / "llada2"),
                              ("sft_nocap", 0.0, work / "llada2-nocap")):
        dm.load_state_dict(converted)
        sft_groups.clear()
        rng.seed(sc.seed + 1)  # both runs see the same batches

        def sft_loss(p: float, lam: float = lam) -> torch.Tensor:
            b = sft_batch(next_sft(), eos)
            m, t = sample_masks(b.maskable, sc.sft_block, *sc.sft_band, g)
            mc, tc = complementary(m, b.maskable, t)
            ids, doc, mk = (torch.cat([x, x]) for x in (b.ids, b.doc, b.maskable))
            return diffusion_loss(dm, ids, doc, torch.cat([m, mc]), torch.cat([t, tc]),
                                  mask_id, sc.sft_block, mk, cap_lambda=lam, g=g).loss

        def dm_val_sft() -> float:
            return _dm_val(dm, val_sets, mask_id, sc)

        # the no-CAP copy: same batches, same step count, and merged from the same steps as
        # the CAP run, so the pair differs only in λ
        paired = name == "sft_nocap"
        keep: list[Snapshot] = []
        steps = len(summary["sft_cap"]) if paired else sc.sft_steps
        summary[name] = train(dm, steps, sc.sft_lr, sft_loss, dm_val_sft, sc, log, name, keep,
                              cap_s=sc.caps.get(name),
                              keep_at=set(summary["sft_cap_merged_steps"]) if paired else None)
        summary[name + "_merged_from"], summary[name + "_merged_steps"] = merge_top_k(
            dm, keep, sc.merge_k)
        log(stage=name + "_merge", steps=summary[name + "_merged_steps"],
            vals=[round(v, 4) for v in summary[name + "_merged_from"]])
        summary[name + "_val_merged"] = dm_val_sft()
        _export(dm, cfg_dm, target, tok, "llada2", eos, mask_id, sc.export_dtype)
    summary["wall_s"] = round(time.monotonic() - t_start, 1)
    log(stage="done", wall_s=summary["wall_s"])
    summary["log"] = log.records
    return summary


def _wsd_bounds(sc: Scale) -> list[tuple[int, float]]:
    """[(block size, progress where its phase ends)] for the conversion."""
    ends, acc = [], 0.0
    for b, share in zip(sc.wsd_blocks, sc.wsd_share, strict=True):
        acc += share
        ends.append((b, round(acc, 6)))
    return ends


@torch.no_grad()
def _dm_val(model: Ling2MoeForward, sets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
            mask_id: int, sc: Scale) -> float:
    """Masked CE at block size `sft_block` with fixed-seed masks (comparable across steps)."""
    model.eval()
    g = torch.Generator().manual_seed(1234)
    total = 0.0
    for ids, doc, maskable in sets:
        m, t = sample_masks(maskable, sc.sft_block, *sc.mask_band, g)
        total += float(diffusion_loss(model, ids, doc, m, t, mask_id, sc.sft_block,
                                      maskable).ce)
    return total / len(sets)


def _export(model: Ling2MoeForward, cfg: dict, out_dir: Path, tok, arch: str, eos: int,
            mask_id: int, dtype: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer_files(tok, out_dir, arch)
    save_weights(model, cfg, out_dir, getattr(torch, dtype))
    gen = ({"eos_token_id": eos, "pad_token_id": eos, "mask_token_id": mask_id}
           if arch == "llada2" else
           {"eos_token_id": [eos, ids["<|role_end|>"]], "bos_token_id": ids["<|startoftext|>"],
            "pad_token_id": eos})
    (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
