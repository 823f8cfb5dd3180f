"""Images that carry their settings: PNG text chunks, one per setting, and A1111's ``parameters`` text, which the
tools users share images with (A1111's PNG info, ComfyUI, image browsers) read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdft.files import write_atomic


def a1111_quote(value: Any) -> str:
    """A value as A1111 writes it into ``parameters``: JSON-quoted when it holds a comma, colon or newline."""
    text = str(value)
    return json.dumps(text) if any(mark in text for mark in ",:\n") else text


def a1111_parameters(record: dict[str, Any]) -> str:
    """A1111's ``parameters`` text (prompt; negative prompt; settings line), as its PNG-info readers parse it.
    LoRAs are named in the prompt as ``<lora:file stem:scale>``, the way A1111 prompts load them."""
    loras = "".join(f" <lora:{Path(file).stem}:{record['lora_scale']:g}>" for file in record["lora"])
    lines = [record["prompt"] + loras]
    if record["negative_prompt"]:
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    settings = {
        "Steps": record["num_inference_steps"],
        "Sampler": record["scheduler"],
        "CFG scale": f"{record['guidance_scale']:g}",
        "Seed": record["seed"],
        "Size": f"{record['width']}x{record['height']}",
        "Model": record["model"],
    }
    if record["checkpoint"]:
        settings["Checkpoint"] = f"{record['run']}/checkpoints/{record['checkpoint']}"
    lines.append(", ".join(f"{key}: {a1111_quote(value)}" for key, value in settings.items()))
    return "\n".join(lines)


def png_info(record: dict[str, Any]) -> PngInfo:
    """PNG text chunks of an image's settings: one per setting (lists as JSON; unset ones left out), and A1111's
    ``parameters``."""
    info = PngInfo()
    for key, value in record.items():
        if key != "file" and value is not None and value != []:
            info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    info.add_text("parameters", a1111_parameters(record))
    return info


def write_image(path: Path, image: Image.Image, record: dict[str, Any]) -> None:
    """Write one PNG with its settings, atomically."""
    write_atomic(path, lambda file: image.save(file, format="PNG", pnginfo=png_info(record)))


def read_image(path: Path) -> Image.Image:
    """An image file's pixels, the file closed."""
    with Image.open(path) as image:
        return image.convert("RGB")
