"""Process-level allocator setting of the inference commands: freed memory is reused, not faulted in again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, resource, sys
import numpy as np
from monai_pipeline.runtime import keep_freed_memory
applied = keep_freed_memory()
np.ones(12_500_000).sum()  # the first 100 MB array: faulted in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    np.ones(12_500_000).sum()  # allocated, touched and freed again
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"applied": applied, "faults": after - before}))
"""


def _run(keep: str) -> dict:
    env = {"MONAI_PIPELINE_KEEP_FREED_MEMORY": keep, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_arrays_are_reused_instead_of_faulted_in_again():
    kept, default = _run("1"), _run("0")
    assert kept["applied"] is True and default["applied"] is False
    # five 100 MB arrays: thousands of page faults when each goes back to the kernel (about 4,500 here, where
    # numpy asks for huge pages; 120,000 without them), next to none when the heap keeps the memory
    assert kept["faults"] * 10 < default["faults"], (kept, default)
