"""The options of ``sdft generate``, checked before anything loads: each mistake is one line naming the option and
the fix."""

from __future__ import annotations

from pathlib import Path

from sdft.errors import UserError

DTYPES = ("float32", "float16", "bfloat16")
#: the option that lists each comparison's values
AXIS_OPTIONS = {"checkpoints": "checkpoint_steps", "lora_scale": "lora_scales", "guidance": "guidance_scales"}


def check_options(
    prompts: list[str],
    seeds: list[int],
    num_inference_steps: int | None,
    resolution: int | None,
    batch_size: int,
    dtype: str | None,
    embeddings: list[Path] | None,
    embedding_tokens: list[str] | None,
) -> None:
    """Refuse option values that cannot work, naming the option and the fix."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UserError(f"prompts must be a list of non-empty prompts, e.g. '[\"a photo of sks dog\"]', got {prompts}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must list distinct seeds, one per grid row, e.g. [0,1,2,3], got {seeds}")
    if num_inference_steps is not None and num_inference_steps < 1:
        raise UserError(f"--num_inference_steps must be a positive number of steps, got {num_inference_steps}")
    if resolution is not None and (resolution < 8 or resolution % 8):
        raise UserError(f"--resolution must be a positive multiple of 8 pixels, e.g. 512, got {resolution}")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    if embedding_tokens is not None and len(embedding_tokens) != len(embeddings or []):
        raise UserError(
            f"--embedding_tokens names {len(embedding_tokens)} words for {len(embeddings or [])} --embeddings files; "
            "give one word per file"
        )


def check_axes(
    compare: str,
    model: str | None,
    lora: list[Path] | None,
    embeddings: list[Path] | None,
    run: Path | None,
    checkpoint_steps: list[int] | None,
    lora_scales: list[float] | None,
    guidance_scales: list[float] | None,
) -> None:
    """Refuse a comparison that cannot be drawn: an axis without its source, an axis of one value, several values
    of a setting that is not compared, or a run mixed with LoRA or embedding files."""
    if compare not in AXIS_OPTIONS and compare != "none":
        raise UserError(f"--compare must be one of none, {', '.join(AXIS_OPTIONS)}, got {compare}")
    if model is None and run is None:
        raise UserError("give the base model with --model (or a run folder with --run)")
    if run is not None and (lora or embeddings):
        raise UserError("--run samples the run's own weights; drop --lora and --embeddings, or drop --run")
    needs = {"checkpoints": ("--run", run), "lora_scale": ("--lora", lora)}
    for axis, (option, value) in needs.items():
        if compare == axis and not value:
            raise UserError(f"--compare {axis} needs {option}")
    if checkpoint_steps is not None and run is None:
        raise UserError("--checkpoint_steps is set but there is no --run whose checkpoints they name")
    if lora_scales is not None and not lora:
        raise UserError("--lora_scales is set but there is no --lora to scale")
    values_of = {"checkpoints": checkpoint_steps, "lora_scale": lora_scales, "guidance": guidance_scales}
    for axis, values in values_of.items():
        check_axis_values(axis, AXIS_OPTIONS[axis], values, compare == axis)


def check_axis_values(axis: str, option: str, values: list | None, compared: bool) -> None:
    """Refuse duplicate values, fewer than two on the compared axis (a run's checkpoints default to all, at least
    the base model and one checkpoint), or several on an axis that is not compared."""
    if values is not None and len(set(values)) != len(values):
        raise UserError(f"--{option} lists a value twice: {values}")
    if compared and (len(values) < 2 if values is not None else axis != "checkpoints"):
        raise UserError(f"--compare {axis} needs at least two --{option} to compare, got {values}; add values")
    if not compared and values is not None and len(values) > 1:
        raise UserError(f"--{option} has {len(values)} values; compare them with --compare {axis}, or give one")


def output_folder(output: Path | None, run: Path | None) -> Path:
    """The folder to write: ``output`` if it is new or empty (never anything of the user's), else the next free
    ``generated/NNN`` (under the run folder with a run)."""
    if output is None:
        parent = (run or Path()) / "generated"
        taken = {int(p.name) for p in parent.glob("[0-9][0-9][0-9]*") if p.name.isdigit()} if parent.is_dir() else set()
        return parent / f"{max(taken, default=-1) + 1:03d}"
    output = Path(output)
    if output.is_dir() and not any(output.iterdir()):
        return output
    if output.exists():
        kind = "folder is not empty" if output.is_dir() else "is a file"
        raise UserError(f"--output {output}: the {kind}; choose a new folder (it must not exist or be empty)")
    return output
