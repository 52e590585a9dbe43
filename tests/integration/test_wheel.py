"""The package as a user installs it: a wheel built with ``python -m build``, clean under ``twine check``,
installed into a fresh virtual environment, then run from outside the repository (``--version``, one synthetic
case through ``synth`` and ``infer``). The fresh environment reaches this environment's packages (torch, MONAI,
...) through a ``.pth`` file, as a user's environment that already has torch would; the package itself comes
only from the wheel."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _run(*args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**env, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})


def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    dist = tmp_path / "dist"
    r = _run(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, REPO, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = dist.glob("monai_pipeline-*.whl")
    r = _run(sys.executable, "-m", "twine", "check", "--strict", wheel, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr

    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    target = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path)
                  .stdout.strip())
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (target / "deps.pth").write_text("\n".join(deps) + "\n")
    r = _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", target, wheel,
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]

    away = tmp_path / "elsewhere"
    away.mkdir()
    r = _run(py, "-c", "import monai_pipeline, sys; print(monai_pipeline.__file__)", cwd=away)
    assert r.returncode == 0 and str(target) in r.stdout, (r.stdout, r.stderr)  # the wheel's copy, not the repo's
    r = _run(py, "-m", "monai_pipeline", "--version", cwd=away)
    assert r.returncode == 0 and r.stdout.strip().startswith("monai-pipeline 0."), r.stderr
    r = _run(py, "-m", "monai_pipeline", "synth", "--out", "data", "--cases", "1", "--matrix", "96",
             "--extent-mm", "50", "--pngs", "0", cwd=away)
    assert r.returncode == 0, r.stderr[-2000:]
    model = REPO / "tests" / "integration" / "golden" / "model.pt"
    (image,) = (away / "data" / "images").glob("*.nii.gz")
    r = _run(py, "-m", "monai_pipeline", "infer", "--model", model, "--input", image, "--out", "masks",
             "--workers", "1", cwd=away)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (away / "masks" / image.name).is_file() and "lesion(s)" in r.stdout
