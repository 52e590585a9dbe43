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


END_SCRIPT = """
import atexit, logging, sys
from monai_pipeline.runtime import end_process
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
logging.getLogger("x").info("logged before the end")
atexit.register(lambda: print("atexit ran"))
print("printed before the end", end="")  # no newline: still in the buffer when the process ends
end_process(3)
print("never")
"""


def test_end_process_keeps_the_status_and_everything_written(tmp_path):
    """No teardown, but nothing written before the end is lost: buffered stdout, a logging file handler."""
    log = tmp_path / "log.txt"
    r = subprocess.run([sys.executable, "-c", END_SCRIPT, str(log)], capture_output=True, text=True)
    assert r.returncode == 3
    assert r.stdout == "printed before the end", "flushed; atexit functions and later code do not run"
    assert "logged before the end" in log.read_text()
