"""Plan the accelerator memory of a LoRA on the published architectures, for each combination of memory switches, and
write ``reports/memory.md`` beside the figures the peers publish.

Every architecture is saved as its configs alone (``scripts/real_architectures.py``) and planned on the meta device
(:mod:`sdft.memory`): no weights, a few seconds each on a CPU. The setting is the one the peers quote: LoRA rank 16 on
the family's default targets, batch 1, 1024 px (512 for SD 1.5), ``bf16-mixed``, AdamW, a subject of 10 photos with
one prompt in the encoding cache.

    uv run python scripts/memory_report.py                  # writes reports/memory.md
    uv run python scripts/memory_report.py --only FLUX.1-dev --output /tmp/memory.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from real_architectures import ARCHITECTURES, architecture_folder  # noqa: E402

from sdft.memory import GIB, Footprint, Switches, measure, plan  # noqa: E402
from sdft.methods import LoRAFineTuner  # noqa: E402

PRECISION = "bf16-mixed"
RANK = 16
IMAGES, PROMPTS = 10, 1
CHECKPOINTED = Switches(gradient_checkpointing=True)
BF16 = dataclasses.replace(CHECKPOINTED, frozen_dtype="bfloat16")
ENCODERS = dataclasses.replace(BF16, offload_text_encoders=True)
#: the switch combinations, each adding to the one before; the last three are alternatives to each other
COMBINATIONS = {
    "none (float32 base)": Switches(),
    "+ gradient checkpointing": CHECKPOINTED,
    "+ bf16 base": BF16,
    "+ text encoders offloaded": ENCODERS,
    "+ float8 base": dataclasses.replace(ENCODERS, quantize="float8"),
    "+ nf4 base (instead of float8)": dataclasses.replace(ENCODERS, quantize="nf4"),
    "+ every block offloaded (no quantized base)": dataclasses.replace(ENCODERS, offload_blocks="all"),
}
#: what the peers publish for a LoRA of these models (their own documentation), and this issue's goals
PEERS = {
    "FLUX.1-dev": "kohya: 24 GB fp8 base (batch 2), 12 GB + 16 blocks swapped + 8-bit AdamW, 8 GB + 28 swapped; "
    "SimpleTuner (rank 16): ~30 GB bf16, 18 GB int8, 9 GB NF4",
    "Qwen-Image": "musubi-tuner: 42 GB plain, 30 GB fp8, 24 GB + 16 blocks swapped, 12 GB + 45 swapped",
    "FLUX.2 [dev]": "diffusion-pipe: at least 48 GB without block swapping",
}
GOALS = {
    "SD 1.5": "at most 4 GB",
    "SDXL": "at most 8 GB",
    "FLUX.1-dev": "at most 18 GB with an int8 or float8 base; at most 8 GB with NF4 and block offloading",
    "Qwen-Image": "at most 24 GB with a float8 base; at most 12 GB with offloading",
}


def footprint_of(name: str, work: Path) -> tuple[Footprint, float]:
    """Measure the LoRA's footprint on the architecture ``name``; return it and the seconds it took."""
    start = time.perf_counter()
    family_class, folder = architecture_folder(name, work / name.replace(" ", "_"))
    tuner = LoRAFineTuner(family_class(str(folder)), rank=RANK, alpha=RANK)
    resolution = 512 if name == "SD 1.5" else 1024
    footprint = measure(tuner, batch_size=1, resolution=resolution, images=IMAGES, prompts=PROMPTS)
    return footprint, time.perf_counter() - start


def gib(size: int) -> str:
    return f"{size / GIB:.1f}"


def architecture_section(name: str, footprint: Footprint, seconds: float) -> list[str]:
    resolution = 512 if name == "SD 1.5" else 1024
    parameters = {c: sum(t.elements for t in tensors) / 1e9 for c, tensors in footprint.frozen.items()}
    sizes = ", ".join(f"{component} {count:.2f}B" for component, count in parameters.items())
    lines = [
        f"### {name}, {resolution} px",
        "",
        f"Parameters: {sizes}; LoRA {sum(footprint.trained.values()) / 1e6:.1f}M. Planned in {seconds:.1f} s.",
        "",
        "| switches | frozen weights | LoRA + grads + AdamW | activations | training step | encoders on the device |",
        "|---|---|---|---|---|---|",
    ]
    for label, switches in COMBINATIONS.items():
        planned = plan(footprint, switches, precision=PRECISION)
        trained = planned.trained + planned.gradients + planned.optimizer
        lines.append(
            f"| {label} | {gib(planned.frozen_total)} | {gib(trained)} | {gib(planned.activations)} "
            f"| **{gib(planned.training)}** | {gib(planned.encoding)} |"
        )
    for title, text in (("Peers", PEERS.get(name)), ("Goal", GOALS.get(name))):
        if text:
            lines += ["", f"{title}: {text}."]
    return [*lines, ""]


def report(names: list[str]) -> str:
    when = datetime.date.today().isoformat()
    machine = platform.processor() or platform.machine()
    lines = [
        "# Memory plan of a LoRA on the published architectures",
        "",
        f"Produced by `uv run python scripts/memory_report.py` on {when}: {machine}, "
        f"{platform.system()}, Python {platform.python_version()}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}. No GPU: these are the plan's figures "
        "(GiB per device, from the configs on the meta device), not measurements.",
        "",
        f"Setting: LoRA rank {RANK} on each family's default targets, batch 1, `{PRECISION}`, AdamW, {IMAGES} photos "
        "and one prompt in the encoding cache. Each row adds its switch to the row above, but the last three are "
        "alternatives: a float8 base, an nf4 base, or every denoiser block offloaded (offloading takes no quantized "
        "base). *Training step*: weights, LoRA, "
        "its gradients and AdamW state, cache and the activations saved for backward. *Encoders on the "
        "device*: the moments the text encoders are on the device beside the rest, without gradients or activations: "
        "at the fit's start (Lightning moves the whole model there, then the training prompts are encoded) and "
        "while previews and evaluation sample. Weights, "
        "trained parameters, gradients and optimizer state are exact (tested against real loads of the tiny "
        "models); activations are an estimate: what autograd saves, counted with fused attention and an emulated "
        "bf16 autocast, without the kernels' scratch memory or the allocator's fragmentation. Prompts count at the "
        "longest the family reads, which bounds Z-Image and Qwen-Image, whose sequences are as long as the prompt. "
        "Where that column exceeds the training step, it is the run's peak: offloading the encoders lowers the "
        "training step only, until the encoders no longer meet the denoiser on the device.",
        "",
    ]
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            footprint, seconds = footprint_of(name, Path(work))
            lines += architecture_section(name, footprint, seconds)
            print(f"{name}: planned in {seconds:.1f} s", flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=list(ARCHITECTURES), help="plan only these")
    parser.add_argument("--output", type=Path, default=Path("reports/memory.md"))
    args = parser.parse_args()
    text = report(args.only or list(ARCHITECTURES))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
