"""The default model is found from a clone (editable install) and from a built wheel."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "shakespeare"


def test_default_model_dir_in_clone():
    from llmcli.paths import default_model_dir

    assert default_model_dir() == MODEL
    for name in ("config.json", "model.safetensors", "tokenizer.model", "README.md"):
        assert (MODEL / name).is_file(), name


def test_bundled_model_size_under_25mb():
    size = sum(p.stat().st_size for p in MODEL.iterdir() if p.is_file())
    assert size <= 25_000_000, size


@pytest.mark.skipif(os.environ.get("LLMCLI_SKIP_WHEEL") == "1", reason="LLMCLI_SKIP_WHEEL=1")
def test_wheel_contains_model_and_runs_from_elsewhere(tmp_path):
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheel_dir.glob("llmcli-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in ("config.json", "model.safetensors", "tokenizer.model"):
            assert f"llmcli/_models/shakespeare/{name}" in names
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "llmcli = llmcli.__main__:main" in zf.read(entry_points).decode()
        site = tmp_path / "site"
        zf.extractall(site)
    # Run the installed copy from another directory: it must find its own bundled model.
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    env.pop("LLMCLI_MODEL", None)
    out = subprocess.run([sys.executable, "-c", "import llmcli.paths as p; print(p.default_model_dir())"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == site / "llmcli" / "_models" / "shakespeare"
    gen = subprocess.run([sys.executable, "-m", "llmcli", "generate", "ROMEO:", "-n", "8", "--temp", "0"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.strip()
