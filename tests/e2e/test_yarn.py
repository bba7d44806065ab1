"""Context extension: YaRN switched on for a checkpoint without it (`hf_overrides`, the engine
side of `--rope-scaling`/`--hf-overrides`), served at 4× its original context; positions past
the original limit equal the reference decoder with YaRN; limits are refused, not clamped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from server.core import SamplingParams
from server.engine.llm import engine_config
from server.model.specials import read_special_ids
from server.startup import plan_startup
from tests.e2e.engine_harness import _mask_id, make_engine, make_prompt, run
from tests.reference.decode import reference_generate
from tests.reference.model import ReferenceModel

ORIGINAL = 128  # the test's "original" context, set through the overrides too
YARN = {"max_position_embeddings": ORIGINAL,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}


def reference_model(model_dir: Path, overrides: dict) -> ReferenceModel:
    config = json.loads((model_dir / "config.json").read_text()) | overrides
    return ReferenceModel(config, load_file(model_dir / "model.safetensors"))


def test_yarn_4x_serves_past_the_original_context(tiny_llada2_peaky: Path) -> None:
    model_dir = tiny_llada2_peaky
    engine = make_engine(model_dir, hf_overrides=YARN, max_model_len=4 * ORIGINAL)
    assert engine.max_model_len == 4 * ORIGINAL
    eos = read_special_ids(model_dir).eos_ids
    reqs = [(f"y{P}", make_prompt(model_dir, P, seed=P), SamplingParams(max_tokens=m))
            for P, m in ((150, 60), (300, 100), (90, 64))]
    got = run(engine, reqs, stagger=1).tokens
    yarn_ref = reference_model(model_dir, YARN)
    plain_ref = reference_model(model_dir, {"max_position_embeddings": ORIGINAL})
    differs = False
    for rid, ids, p in reqs:
        with torch.inference_mode():
            want = reference_generate(yarn_ref, ids, p.max_tokens, mask_id=_mask_id(model_dir),
                                      eos_ids=eos)
            plain = reference_generate(plain_ref, ids, p.max_tokens,
                                       mask_id=_mask_id(model_dir), eos_ids=eos)
        assert got[rid] == want, rid
        differs |= plain != want
    assert differs, "YaRN changed no output: the test would not notice it missing"


def test_context_limits_are_refused_not_clamped(tiny_llada2: Path) -> None:
    original = json.loads((tiny_llada2 / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(ValueError, match="exceeds what the model supports"):
        plan_startup(engine_config(str(tiny_llada2), max_model_len=original + 1))
    plan = plan_startup(engine_config(str(tiny_llada2), hf_overrides={
        "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}))
    assert plan.max_model_len == 2 * original  # the default is the model's maximum
    with pytest.raises(ValueError, match="exceeds"):
        plan_startup(engine_config(str(tiny_llada2), max_model_len=2 * original + 1,
                                   hf_overrides={"rope_scaling": {"rope_type": "yarn",
                                                                  "factor": 2.0}}))


def test_the_pool_must_hold_one_context(tiny_llada2: Path) -> None:
    """An explicit --max-model-len the KV pool cannot hold is refused at start; the default is
    lowered to what the pool holds; a request past it is the client's error (ValueError → 400
    over HTTP), never an engine failure."""
    with pytest.raises(ValueError, match="KV pool holds 4 pages"):
        make_engine(tiny_llada2, num_pages=4, max_model_len=512)
    with pytest.raises(ValueError, match="KV pool holds 4 pages"):  # --check-config sees it
        plan_startup(engine_config(str(tiny_llada2), num_pages=4, max_model_len=512))
    assert plan_startup(engine_config(str(tiny_llada2), num_pages=4)).max_model_len == 128
    engine = make_engine(tiny_llada2, num_pages=4)
    assert engine.max_model_len == engine.info.max_model_len == 4 * 32
    from server.core import GenerateRequest

    with pytest.raises(ValueError, match="maximum context length is 128"):
        engine.add_request(GenerateRequest("big", tuple(range(5, 105)),
                                           SamplingParams(max_tokens=64)))


def test_served_with_yarn_flags_over_http(tiny_llada2_peaky: Path) -> None:
    """`unmask serve --hf-overrides ... --max-model-len 4x`: a prompt past the original context
    is served and equals the YaRN reference; past the extended one it is a 400."""
    import httpx

    from tests.e2e.server_harness import API_KEY, RemoteServer

    model_dir = tiny_llada2_peaky
    ids = make_prompt(model_dir, 300, seed=300)
    srv = RemoteServer(model_dir, "--hf-overrides", json.dumps(YARN), "--max-model-len",
                       str(4 * ORIGINAL), "--num-pages", "64")
    try:
        r = srv.client().completions.create(model="tiny", prompt=ids, max_tokens=100,
                                            extra_body={"return_token_ids": True})
        too_long = httpx.post(srv.url + "/v1/completions",
                              headers={"Authorization": f"Bearer {API_KEY}"},
                              json={"model": "tiny", "prompt": ids + ids, "max_tokens": 4})
    finally:
        assert srv.stop() == 0
    with torch.inference_mode():
        want = reference_generate(reference_model(model_dir, YARN), ids, 100,
                                  mask_id=_mask_id(model_dir),
                                  eos_ids=read_special_ids(model_dir).eos_ids)
    assert r.choices[0].model_extra["token_ids"] == want
    assert too_long.status_code == 400, too_long.text
    assert "maximum context length is 512" in too_long.json()["error"]["message"]
