"""Time the quickstart run and the evaluation's share of it; write reports/quickstart_benchmark.md.

    uv run python scripts/benchmark_quickstart.py

Runs ``sdft fit --config configs/quickstart.yaml`` into a temporary folder, reads the evaluator's per-evaluation
wall time from ``evaluation/metrics.jsonl``, and records the machine, the library versions and the date.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import diffusers
import lightning
import peft
import torch

from sdft.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_quickstart(save_dir: Path) -> tuple[float, Path]:
    """Run the quickstart fit; return its wall time and run folder."""
    started = time.perf_counter()
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            f"--trainer.logger.init_args.save_dir={save_dir}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    return time.perf_counter() - started, save_dir / "quickstart" / "version_0"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores ({cpu}), torch threads {threads}"


def versions() -> str:
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}, "
        f"diffusers {diffusers.__version__}, peft {peft.__version__}"
    )


def write_report(total: float, run_dir: Path) -> Path:
    rows = [json.loads(line) for line in (run_dir / "evaluation" / "metrics.jsonl").read_text().splitlines()]
    evaluation = sum(row["seconds"] for row in rows)
    lines = [
        "# Quickstart benchmark",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the end (other work slows the run)",
        f"- versions: {versions()}",
        "- command: `uv run python scripts/benchmark_quickstart.py` (`sdft fit --config configs/quickstart.yaml`)",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| whole fit, wall (incl. model build/load, sampling, evaluation, export) | {total:.1f} s |",
        f"| evaluations | {len(rows)} (steps {', '.join(str(r['step']) for r in rows)}) |",
        f"| evaluation wall time, total | {evaluation:.1f} s |",
        f"| evaluation share of the fit | {100 * evaluation / total:.0f} % |",
        f"| evaluation wall time, mean per evaluation | {evaluation / len(rows):.2f} s |",
        "",
    ]
    output = ROOT / "reports" / "quickstart_benchmark.md"
    output.write_text("\n".join(lines))
    return output


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        total, run_dir = run_quickstart(Path(folder))
        print(write_report(total, run_dir).read_text())
