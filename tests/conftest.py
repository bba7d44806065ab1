"""Shared fixtures: tiny real-format checkpoints written once per session by our generator."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _make(tmp_path_factory: pytest.TempPathFactory, name: str, **kw: object) -> Path:
    from server.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp(name), **kw)


@pytest.fixture(scope="session")
def tiny_llada2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory, "llada2", arch="llada2", seed=0)


@pytest.fixture(scope="session")
def tiny_llada2_peaky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory, "llada2_peaky", arch="llada2", seed=1, peaky=True)


@pytest.fixture(scope="session")
def tiny_ling2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make(tmp_path_factory, "ling2", arch="ling2", seed=2)


@pytest.fixture(scope="session")
def tiny_llada22(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LLaDA2.2 keys: edit ids <|delete|>/<|split|>, block routing (4 of 8 experts), two EOS."""
    return _make(tmp_path_factory, "llada22", arch="llada2.2", seed=3)


@pytest.fixture(scope="session")
def tiny_llada22_peaky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As `tiny_llada22`, peaky; DELETE / SPLIT win where their key tokens stand
    (`server.tiny.weights.edit_keys`)."""
    return _make(tmp_path_factory, "llada22_peaky", arch="llada2.2", seed=4, peaky=True)
