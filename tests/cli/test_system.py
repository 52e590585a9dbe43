"""``doctor`` reports this installation truthfully; ``completion`` scripts complete verbs, options and choices in
a real bash."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from monai_pipeline import __version__
from monai_pipeline.cli import build_parser
from monai_pipeline.cli.completion import script
from tests.helpers import run_cli


def test_doctor_reports_this_installation():
    r = run_cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    assert env["monai-pipeline"] == __version__
    assert env["packages"]["torch"] in (torch.__version__, torch.__version__.split("+")[0])
    assert env["torch_cuda"] == torch.version.cuda and len(env["gpus"]) == torch.cuda.device_count()
    assert env["memory_gib"] > 0 and env["disk_free_gib"] >= 0 and env["cpu_count"] >= 1
    text = run_cli("doctor").stdout
    assert f"monai-pipeline {__version__}" in text and "monai " in text and "GPU" in text


def _complete(tmp_path, words: list[str]) -> list[str]:
    """COMPREPLY of the generated bash function for the command line ``words`` (the cursor on the last one)."""
    (tmp_path / "c.bash").write_text(script(build_parser(), "bash"))
    line = " ".join(f"'{w}'" for w in words)
    cmd = (f"source {tmp_path / 'c.bash'}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _monai_pipeline; "
           'printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completion_of_verbs_options_and_choices(tmp_path):
    assert {"infer", "train", "doctor", "--version"} <= set(_complete(tmp_path, ["monai-pipeline", ""]))
    assert _complete(tmp_path, ["monai-pipeline", "in"]) == ["infer"]
    assert "--manifest" in _complete(tmp_path, ["monai-pipeline", "-v", "infer", "--"])
    assert "--allow-non-ct" in _complete(tmp_path, ["monai-pipeline", "infer", "--all"])
    assert _complete(tmp_path, ["monai-pipeline", "infer", "--tta-scope", ""]) == ["candidates", "volume"]
    assert _complete(tmp_path, ["monai-pipeline", "completion", "z"]) == ["zsh"]
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    assert _complete(tmp_path, ["monai-pipeline", "infer", "--input", "sc"]) == ["scan.nii.gz"]


def test_completion_verb_prints_the_scripts():
    bash = run_cli("completion", "bash")
    zsh = run_cli("completion", "zsh")
    assert bash.returncode == zsh.returncode == 0
    assert "complete -o filenames -F _monai_pipeline monai-pipeline" in bash.stdout
    assert zsh.stdout.startswith("autoload -U +X bashcompinit") and bash.stdout in zsh.stdout
