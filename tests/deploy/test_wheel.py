"""The wheel, installed for real: built from a copy of the sources, installed into a fresh
virtual environment, and `unmask serve` run from a directory outside the checkout with no model
argument answers from the shipped model (deploy/README.md, "pip")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from tests.e2e.server_harness import RemoteServer

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("server", "unmask_kernels", "loadtest")
LEFT_OUT = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "*.pyc",
                                  "results", "wheels")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel` on a copy of the checkout (an in-tree build/ could leak stale files)."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=LEFT_OUT)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(tmp / "src")], check=True)
    (whl,) = (tmp / "dist").glob("unmask-*.whl")
    return whl


def test_wheel_holds_every_source_package_and_the_model_pair(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.parent.relative_to(ROOT)) for top in SOURCES
                for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts}
    assert "server/distributed" in packages
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert not missing, f"packages left out of the wheel: {missing}"
    modules = {str(p.relative_to(ROOT)) for top in SOURCES for p in (ROOT / top).rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    for model in ("llada2", "ling2"):
        for f in (ROOT / "server/checkpoints" / model).iterdir():
            assert f"server/checkpoints/{model}/{f.name}" in names
    assert not any(n.startswith(("training/", "tests/", "kernels/")) for n in names)
    for f in (ROOT / "server/api/static").iterdir():  # the playground page
        assert f"server/api/static/{f.name}" in names


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh environment: this machine's torch build first (as `make install` does: the CPU
    wheel, not PyPI's CUDA one), then the wheel with its dependencies resolved by pip."""
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    pip = [str(env / "bin/python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch.__version__}"], check=True)
    subprocess.run([*pip, str(wheel)], check=True)
    yield env
    shutil.rmtree(env, ignore_errors=True)


def test_installed_wheel_serves_the_shipped_model(venv: Path, tmp_path: Path) -> None:
    site = subprocess.run([str(venv / "bin/python"), "-c",
                           "import server, sys; print(server.__file__)"], cwd=tmp_path,
                          capture_output=True, text=True, check=True).stdout.strip()
    assert Path(site).is_relative_to(venv), site
    srv = RemoteServer(None, name="default", unmask=venv / "bin/unmask", cwd=tmp_path,
                       env={"PYTHONPATH": ""}, timeout=180)
    try:
        card = srv.client().models.list().data[0]
        served = Path(card.root)
        assert served.is_relative_to(venv) and served.name == "llada2", served
        out = srv.client().chat.completions.create(
            model="default", max_tokens=48, temperature=0,
            messages=[{"role": "user", "content": "Write a Python function `is_palindrome(s)` "
                       "that checks whether the string s is a palindrome."}])
        assert "def is_palindrome" in (out.choices[0].message.content or ""), out
        for path in ("/playground", "/playground/playground.js", "/playground/playground.css"):
            assert httpx.get(srv.url + path, timeout=10).status_code == 200, path
    finally:
        assert srv.stop() == 0
