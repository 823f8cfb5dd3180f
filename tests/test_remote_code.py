"""A model folder's own code never runs: sdft loads every component by its class (``CLIPTextModel``,
``UNet2DConditionModel``, ``ViTModel``), never through an ``auto_map`` a repository declares."""

from __future__ import annotations

import json
import shutil

import torch

from sdft.families import StableDiffusion

PAYLOAD = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from transformers import CLIPTextModel as CustomTextModel
"""


def test_a_model_folders_own_code_is_never_imported(tiny_sd1, tmp_path):
    folder, marker = tmp_path / "model", tmp_path / "ran"
    shutil.copytree(tiny_sd1, folder)
    (folder / "text_encoder" / "custom.py").write_text(PAYLOAD.format(marker=str(marker)))
    config_path = folder / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoModel": "custom.CustomTextModel", "AutoConfig": "custom.CustomTextModel"}
    config_path.write_text(json.dumps(config))
    family = StableDiffusion(str(folder))
    family.load()
    assert not marker.exists()
    reference = StableDiffusion(str(tiny_sd1))
    reference.load()
    tokens = family.tokenizer(["a toy"], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(family.text_encoder(tokens)[0], reference.text_encoder(tokens)[0])
    pipeline = family.pipeline()
    assert not marker.exists() and type(pipeline.text_encoder).__name__ == "CLIPTextModel"
