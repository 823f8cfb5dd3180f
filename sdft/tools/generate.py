"""``sdft generate``: images and labelled comparison grids from a base model plus any sdft output.

Sources: a base model (hub id, diffusers folder, ``builtin:...``, or a full fine-tune's export), optionally with
LoRA, DoRA, LoKr or LoHa files (diffusers, kohya or LyCORIS format) and embedding files (textual inversion, pivotal
tuning); or a run folder, whose checkpoints are loaded into the run's own model and sampled as training's previews
are.

Axes: prompts x seeds x one compared setting (checkpoints, LoRA scales, guidance scales, or none). Output::

    <output>/images/prompt_000/<column>_seed_<seed>.png  one image each, its settings in PNG text chunks
    <output>/grids/prompt_000.png                        one labelled grid per prompt: rows seeds, columns values
    <output>/generation.json                             every image and grid with its settings

Every image is a function of its settings: the seeds draw through one ``torch.Generator`` per image on the device,
so a rerun with the same settings writes the same pixels.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from sdft.errors import UserError
from sdft.files import write_atomic, write_json
from sdft.tools import sources
from sdft.tools.generation_options import check_axes, check_options, output_folder
from sdft.tools.grids import draw_grid, grid_layout
from sdft.tools.png_text import read_image, write_image

Comparison = Literal["none", "checkpoints", "lora_scale", "guidance"]
INDEX = "generation.json"


@dataclass(frozen=True)
class Column:
    """One compared value: the settings of one column of every grid.

    Attributes:
        label: drawn above the column, e.g. ``step 400``.
        slug: names its image files, e.g. ``step_000400``.
        guidance_scale: the classifier-free (or, for Flux.1, distilled) guidance scale.
        lora_scale: the strength of every LoRA; None without LoRAs.
        step: the run's step whose weights sample (0: the base model); None without a run.
        checkpoint: the checkpoint file of ``step``; None for step 0 or without a run.
    """

    label: str
    slug: str
    guidance_scale: float
    lora_scale: float | None = None
    step: int | None = None
    checkpoint: Path | None = None


@dataclass
class Plan:
    """Everything one call samples, checked before any model loads; the sources are added by :func:`add_model` or
    :func:`add_run`, the columns last."""

    prompts: list[str]
    seeds: list[int]
    output: Path
    device: str
    dtype: str
    negative_prompt: str | None
    num_inference_steps: int | None
    resolution: int | None
    batch_size: int
    variant: str | None
    family: type | None = None
    model: str = ""
    loras: list[Path] = field(default_factory=list)
    embeddings: list[sources.Embedding] = field(default_factory=list)
    run: Path | None = None
    tuner: Any = None
    columns: list[Column] = field(default_factory=list)


def generate(
    prompts: list[str],
    model: str | None = None,
    lora: list[Path] | None = None,
    embeddings: list[Path] | None = None,
    run: Path | None = None,
    compare: Comparison = "none",
    checkpoint_steps: list[int] | None = None,
    lora_scales: list[float] | None = None,
    guidance_scales: list[float] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2, 3),
    negative_prompt: str | None = None,
    num_inference_steps: int | None = None,
    resolution: int | None = None,
    output: Path | None = None,
    family: str | None = None,
    variant: str | None = None,
    embedding_tokens: list[str] | None = None,
    device: str | None = None,
    dtype: Literal["float32", "float16", "bfloat16"] | None = None,
    batch_size: int = 1,
) -> Path:
    """Generate images and one labelled comparison grid per prompt (rows: seeds; columns: the compared values).

    Writes a new folder: images/ (each PNG holds its settings in text chunks, A1111's parameters among them),
    grids/ and generation.json (every image with its settings). The same settings give the same images.

    Args:
        prompts: the prompts, e.g. '["a photo of sks dog", "a sks dog in the snow"]'.
        model: the base model: hub id, diffusers folder, builtin:tiny-sd1, or a full fine-tune's export. With
            --run, it replaces the run's base model path.
        lora: adapter files (LoRA, DoRA, LoKr, LoHa; diffusers, kohya or LyCORIS format) or export folders
            holding one; all load together.
        embeddings: textual-inversion or pivotal-tuning embedding files, or export folders holding one.
        run: a run folder made by sdft fit; its checkpoints sample in the run's own model.
        compare: the grid's columns: checkpoints (of --run), lora_scale, guidance, or none.
        checkpoint_steps: the run's steps to sample (0: the base model); default all with --compare checkpoints,
            else the last.
        lora_scales: the strength of every LoRA, one value per column with --compare lora_scale; default 1.
        guidance_scales: guidance scales, one per column with --compare guidance; default the pipeline's.
        seeds: one image (grid row) per seed.
        negative_prompt: what the images should not show (pipelines with classifier-free guidance).
        num_inference_steps: denoising steps; default the pipeline's (50 for SD 1.x, 2.x and XL, 28 for SD3 and Flux).
        resolution: image side in pixels; default the model's.
        output: a new folder for the results; default the next free generated/NNN (under --run when given).
        family: the model family (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux); default read from
            the model's model_index.json.
        variant: weight variant of the base model to load, e.g. fp16.
        embedding_tokens: the word each embedding file is named by in prompts; default the file's own (its key,
            or its file name as A1111 names it).
        device: where to sample; default cuda when available, else cpu. Images differ between devices.
        dtype: float32, float16 or bfloat16; default bfloat16 on cuda, float32 on cpu.
        batch_size: seeds sampled per pipeline call. 1 makes every image a function of its seed alone; more is
            faster on a GPU, but batched kernels may round differently (pixel values off by 1 from batch 1).
    """
    check_options(
        prompts, list(seeds), num_inference_steps, resolution, batch_size, dtype, embeddings, embedding_tokens
    )
    check_axes(compare, model, lora, embeddings, run, checkpoint_steps, lora_scales, guidance_scales)
    run = None if run is None else Path(run)
    device, dtype = choose_device(device, dtype)
    plan = Plan(list(prompts), list(seeds), output_folder(output, run), device, dtype, negative_prompt,
                num_inference_steps, resolution, batch_size, variant)  # fmt: skip
    if run is None:
        steps = add_model(plan, model, family, lora or [], embeddings or [], embedding_tokens)
    else:
        steps = add_run(plan, run, model, checkpoint_steps, compare == "checkpoints")
    plan.num_inference_steps = num_inference_steps or pipeline_default(plan.family, "num_inference_steps")
    guidance = guidance_scales or [pipeline_default(plan.family, plan.family.guidance_parameter)]
    plan.columns = make_columns(compare, guidance, (lora_scales or [1.0]) if plan.loras else [None], steps, plan.model)
    records = sample_columns(plan)
    grids = write_grids(plan, records)
    write_json(plan.output / INDEX, index(plan, records, grids))
    print(f"{len(records)} images and {len(grids)} grids in {plan.output}")
    return plan.output


# -- the plan ---------------------------------------------------------------------------------------------------------


def pipeline_default(family: type, name: str) -> Any:
    """The default of ``name`` in the family's diffusers pipeline call (its guidance scale, its number of steps)."""
    return inspect.signature(family.pipeline_class.__call__).parameters[name].default


def choose_device(device: str | None, dtype: str | None) -> tuple[str, str]:
    """The device (cuda when available) and the dtype name (bfloat16 on cuda, float32 elsewhere) to sample in."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available; use --device cpu")
    return device, dtype or ("bfloat16" if device.startswith("cuda") else "float32")


def add_model(
    plan: Plan, model: str, family: str | None, lora: list[Path], embeddings: list[Path], tokens: list[str] | None
) -> list[tuple[None, None]]:
    """Add a base model with its LoRA and embedding files to ``plan``, each checked against the model's family;
    return the one (step, checkpoint) pair of a model without a run."""
    plan.family, plan.model = sources.detect_family(model, family), model
    plan.loras = [sources.lora_file(path) for path in lora]
    for file in plan.loras:
        sources.check_lora(file, plan.family, model)
    for file in plan.loras:
        sources.check_lora_fits(file, plan.family, model, plan.variant)
    tokens = tokens or [None] * len(embeddings)
    plan.embeddings = [sources.read_embedding(p, t, plan.family) for p, t in zip(embeddings, tokens, strict=True)]
    return [(None, None)]


def add_run(
    plan: Plan, run: Path, model: str | None, steps: list[int] | None, compare: bool
) -> list[tuple[int, Path | None]]:
    """Add a run's model (from its config, ``model`` replacing its base model path) to ``plan``; return the (step,
    checkpoint) pairs to sample."""
    sources.check_run(run)
    plan.run, plan.tuner = run, sources.run_model(run, model)
    plan.family, plan.model = type(plan.tuner.family), plan.tuner.family.pretrained_model_name_or_path
    return sources.run_checkpoints(run, steps, compare)


def make_columns(
    compare: str, guidance: list[float], scales: list[float | None], steps: list[tuple], model: str
) -> list[Column]:
    """The grid's columns: one per value of the compared setting, the others at their single value."""
    first = Column(f"{Path(model).name or model}", "image", guidance[0], scales[0], *steps[-1])
    if compare == "guidance":
        return [replace(first, label=f"guidance {g:g}", slug=f"guidance_{g:g}", guidance_scale=g) for g in guidance]
    if compare == "lora_scale":
        return [replace(first, label=f"LoRA {s:g}", slug=f"lora_{s:g}", lora_scale=s) for s in scales]
    if compare == "checkpoints":
        return [
            replace(
                first,
                label=f"step {step}" + (" (base)" if step == 0 else ""),
                slug=f"step_{step:06d}",
                step=step,
                checkpoint=checkpoint,
            )
            for step, checkpoint in steps
        ]
    return [first if steps[-1][0] is None else replace(first, label=f"step {steps[-1][0]}")]


# -- sampling ---------------------------------------------------------------------------------------------------------


def column_pipelines(plan: Plan) -> Iterator[tuple[Column, Any, Any]]:
    """Each column with the pipeline that samples it and the family whose options it samples with, loading models as
    needed."""
    import torch

    device, dtype = torch.device(plan.device), getattr(torch, plan.dtype)
    return model_pipelines(plan, device, dtype) if plan.run is None else run_pipelines(plan, device, dtype)


def model_pipelines(plan: Plan, device: Any, dtype: Any) -> Iterator[tuple[Column, Any, Any]]:
    """The base model's pipeline with the LoRA and embedding files loaded, the LoRAs at each column's scale."""
    family = plan.family(plan.model, variant=plan.variant)
    pipeline = family.base_pipeline(device, dtype)
    names, fused = sources.load_loras(pipeline, plan.loras, family, plan.model)
    sources.load_embeddings(pipeline, plan.embeddings, plan.family, plan.model)
    for column in plan.columns:
        if names:
            pipeline.set_adapters(names, [column.lora_scale] * len(names))
        if fused.changes:
            fused.apply(column.lora_scale)
        yield column, pipeline, family


def run_pipelines(plan: Plan, device: Any, dtype: Any) -> Iterator[tuple[Column, Any, Any]]:
    """The run's model with each column's checkpoint applied (in step order; step 0 is the model before training),
    its pipeline built over the live weights as training's previews build it."""
    from sdft.runs import apply_checkpoint

    tuner, applied = plan.tuner, None
    tuner.configure_model()
    tuner.eval().to(device=device, dtype=dtype)
    for column in plan.columns:
        if column.checkpoint is not None and column.checkpoint != applied:
            apply_checkpoint(tuner, column.checkpoint)
            applied = column.checkpoint
        pipeline = tuner.family.pipeline()
        pipeline.set_progress_bar_config(disable=True)
        yield column, pipeline, tuner.family


def sample(pipeline: Any, family: Any, plan: Plan, prompt: str, seeds: list[int], column: Column) -> list:
    """One image per seed of ``prompt`` in one pipeline call, each drawn from its own generator on the device, with
    the family's guidance and sampling options."""
    import torch

    generators = [torch.Generator(plan.device).manual_seed(seed) for seed in seeds]
    options = {**family.guidance_options(column.guidance_scale, len(seeds)), **family.sampling_options()}
    if plan.negative_prompt is not None:  # passed only when given: FLUX.2 [klein]'s pipeline takes none
        options["negative_prompt"] = [plan.negative_prompt] * len(seeds)
    with torch.no_grad():
        return pipeline(
            prompt=[prompt] * len(seeds),
            generator=generators,
            height=plan.resolution,
            width=plan.resolution,
            num_inference_steps=plan.num_inference_steps,
            **options,
        ).images


def sample_columns(plan: Plan) -> list[dict[str, Any]]:
    """Sample every column, prompt and seed; write each image as it comes, and the index after each column.
    Returns the images' records."""
    records: list[dict[str, Any]] = []
    for column, pipeline, family in column_pipelines(plan):
        for number, prompt in enumerate(plan.prompts):
            for start in range(0, len(plan.seeds), plan.batch_size):
                seeds = plan.seeds[start : start + plan.batch_size]
                for seed, image in zip(seeds, sample(pipeline, family, plan, prompt, seeds, column), strict=True):
                    record = image_record(plan, column, pipeline, number, seed, image.size)
                    write_image(plan.output / record["file"], image, record)
                    records.append(record)
        write_json(plan.output / INDEX, index(plan, records, []))
        print(f"{column.label}: {len(plan.prompts) * len(plan.seeds)} images")
    return records


# -- files ------------------------------------------------------------------------------------------------------------


def image_record(
    plan: Plan, column: Column, pipeline: Any, number: int, seed: int, size: tuple[int, int]
) -> dict[str, Any]:
    """Everything one image depends on, and its file (relative to the output folder)."""
    return {
        "file": f"images/prompt_{number:03d}/{column.slug}_seed_{seed}.png",
        "prompt": plan.prompts[number],
        "negative_prompt": plan.negative_prompt,
        "seed": seed,
        "num_inference_steps": plan.num_inference_steps,
        "guidance_scale": column.guidance_scale,
        "width": size[0],
        "height": size[1],
        "model": plan.model,
        "family": plan.family.__name__,
        "scheduler": type(pipeline.scheduler).__name__,
        "lora": [str(file) for file in plan.loras],
        "lora_scale": column.lora_scale,
        "embeddings": [{"file": str(e.file), "token": e.token} for e in plan.embeddings],
        "run": None if plan.run is None else str(plan.run),
        "step": column.step,
        "checkpoint": None if column.checkpoint is None else column.checkpoint.name,
        "device": plan.device,
        "dtype": plan.dtype,
        "batch_size": plan.batch_size,
    }


def subtitle(plan: Plan, record: dict[str, Any], compare: str) -> str:
    """The settings every image of a grid shares, in one line under the prompt."""
    parts = [f"{record['model']}", f"{record['num_inference_steps']} steps", f"{record['width']}x{record['height']}"]
    if compare != "guidance":
        parts.append(f"guidance {record['guidance_scale']:g}")
    if plan.loras and compare != "lora_scale":
        parts.append(f"LoRA {record['lora_scale']:g}")
    if plan.run is not None and compare != "checkpoints":
        parts.append(f"step {record['step']}")
    if plan.negative_prompt:
        parts.append(f"negative: {plan.negative_prompt}")
    return " · ".join(parts)


def write_grids(plan: Plan, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One labelled grid per prompt (rows: seeds; columns: the compared values); returns their records, each with
    its layout (where every tile and label is)."""
    compare = comparison(plan.columns)
    by_file = {record["file"]: record for record in records}
    rows, columns = [f"seed {seed}" for seed in plan.seeds], [column.label for column in plan.columns]
    grids = []
    for number, prompt in enumerate(plan.prompts):
        files = [[f"images/prompt_{number:03d}/{c.slug}_seed_{seed}.png" for c in plan.columns] for seed in plan.seeds]
        images = [[read_image(plan.output / file) for file in row] for row in files]
        layout = grid_layout(images[0][0].size, rows, columns, prompt, subtitle(plan, by_file[files[0][0]], compare))
        grid = draw_grid(images, layout, rows, columns)
        file = f"grids/prompt_{number:03d}.png"
        write_atomic(plan.output / file, lambda output, grid=grid: grid.save(output, format="PNG"))
        grids.append({"file": file, "prompt": prompt, "rows": rows, "columns": columns, "layout": asdict(layout)})
    return grids


def comparison(columns: list[Column]) -> str:
    """Which setting differs between the columns (``none`` for one column)."""
    for axis, attribute in (("guidance", "guidance_scale"), ("lora_scale", "lora_scale"), ("checkpoints", "step")):
        if len({getattr(column, attribute) for column in columns}) > 1:
            return axis
    return "none"


def index(plan: Plan, records: list[dict[str, Any]], grids: list[dict[str, Any]]) -> dict[str, Any]:
    """The contents of ``generation.json``: the comparison, the grids and every image with its settings."""
    return {
        "compare": comparison(plan.columns),
        "columns": [column.label for column in plan.columns],
        "prompts": plan.prompts,
        "seeds": plan.seeds,
        "grids": grids,
        "images": records,
    }
