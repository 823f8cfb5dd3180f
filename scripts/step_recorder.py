"""Run a Python program in this process and record when each of its optimizer steps ends.

    python scripts/step_recorder.py RECORD.json SCRIPT [ARGS...]
    python scripts/step_recorder.py RECORD.json -m MODULE [ARGS...]

When the program ends, RECORD.json holds ``steps``, the wall-clock times (``time.time()``) at which
``torch.optim.Optimizer.step`` returned, in order (on a GPU, once the GPU finished the step); ``rss_peak_bytes``,
the process's peak resident memory (Linux's ``VmHWM``, which, unlike ``ru_maxrss``, does not count the memory of the
process that launched this one); and ``cuda_peak_bytes``, the peak of CUDA memory allocated by torch (null when CUDA
was not used). scripts/benchmark.py runs sdft, diffusers' training script and the bare loop under it, so all are
timed by the same hook whatever their loops look like.
"""

from __future__ import annotations

import atexit
import json
import resource
import runpy
import sys
import time
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


def rss_peak_bytes() -> int:
    """This process's peak resident memory: ``VmHWM`` where /proc has it, else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.exists():
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def step_end() -> float:
    """Now, once the GPU (if one is in use) has finished the work queued so far."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.time()


def write_record(record: Path, steps: list[float]) -> None:
    cuda_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None
    record.write_text(json.dumps({"steps": steps, "rss_peak_bytes": rss_peak_bytes(), "cuda_peak_bytes": cuda_peak}))


def main() -> None:
    record, target, *arguments = sys.argv[1:]
    steps: list[float] = []
    register_optimizer_step_post_hook(lambda *_: steps.append(step_end()))
    atexit.register(write_record, Path(record), steps)
    if target == "-m":  # as ``python -m MODULE`` and ``python SCRIPT`` would set sys.argv and sys.path
        module, *arguments = arguments
        sys.argv, sys.path[0] = [module, *arguments], ""
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv, sys.path[0] = [target, *arguments], str(Path(target).resolve().parent)
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
