"""Our unmask_kernels/ package must never pass for Hugging Face's `kernels` package.

transformers probes `importlib.util.find_spec("kernels")` and the installed distributions'
top-level names (`is_kernels_available`); if it believed ours were hub kernels it would try
`from kernels import get_kernel`. We install kernels/ under the import name `unmask_kernels`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib.metadata as md, importlib.util, json
from transformers.utils.import_utils import is_kernels_available
import unmask_kernels
dists = md.packages_distributions()
print(json.dumps({
    "available": is_kernels_available(),
    "kernels_dists": dists.get("kernels", []),
    "ours": unmask_kernels.__file__,
}))
"""


@pytest.mark.parametrize("cwd", [ROOT, Path("/")])
def test_transformers_does_not_see_hub_kernels(cwd: Path) -> None:
    import json

    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True,
                         text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["available"] is False
    assert "unmask" not in probe["kernels_dists"]
    assert Path(probe["ours"]).parent == ROOT / "unmask_kernels"


def test_server_imports_without_gpu_libraries() -> None:
    code = ("import sys, server, server.engine.engine, unmask_kernels;"
            "bad = [m for m in ('triton', 'flashinfer') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd="/", check=True)
