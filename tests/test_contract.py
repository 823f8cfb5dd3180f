"""The contract between methods and families: every method trains on every family through the same interface.

For each (family, method) on the family's tiny model: a short fit lowers the fixed-noise validation loss, the
checkpoint holds exactly the tensors that train, resuming from a mid-run checkpoint gives the uninterrupted losses,
and the family's stock diffusers pipeline loads the export and reproduces the trained model's images while they
differ from the untrained model's. LoRA is the fast representative of each family; the other cells are ``slow``.

The other adapter kinds (DoRA, LoKr, LoHa) run on one UNet family (SD 1.x), one transformer family (Qwen-Image) and
Flux.1, whose original layers fuse q, k, v (its LoKr written per projection under ComfyUI's ``lycoris_`` names), one
fast cell per kind and Flux.1's LoKr; each export is read by the loader that reads it: diffusers'
``load_lora_weights`` for DoRA, ComfyUI's weight formulas (:mod:`comfyui_weights`) applied to the stock pipeline's
weights for LoKr and LoHa.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from comfyui_weights import apply_comfyui
from families import FAMILY_CASES, FamilyCase
from training import Fit, adamw, fit, full_tuner, lora_tuner, resumed_losses, stock_images, subject_data, trained_images

from sdft.methods import DiffusionFineTuner, PivotalTuning, TextualInversion
from sdft.methods.lora import LORA_WEIGHTS, kohya_file
from sdft.methods.tokens import EMBEDDINGS_FILE

STEPS = 4
#: textual inversion moves the tiny random model's loss slowly: a few more steps make the fall deterministic
STEPS_OF = {"textual_inversion": 10}
PROMPT = "a photo of <sks> toy"
#: the adapter kinds beside LoRA, exported in the format whose loader each cell checks
ADAPTERS = ("dora", "lokr", "loha")
#: LoKr and LoHa start from products with a zero factor and move slower: a larger step makes the change visible
LR_OF = {"lokr": 3e-2, "loha": 3e-2}


def build_method(method: str, case: FamilyCase) -> DiffusionFineTuner:
    """A method on a fresh family, with a learning rate that moves the tiny model in a few steps."""
    tokens = {"placeholder_token": "<sks>", "initializer_token": "toy"}
    if method == "lora":
        return lora_tuner(case.family(), lr=5e-3, train_text_encoder=True)
    if method in ADAPTERS:
        return lora_tuner(case.family(), lr=LR_OF.get(method, 5e-3), train_text_encoder=True, adapter=method)
    if method == "full":
        return full_tuner(case.family())
    if method == "textual_inversion":
        return TextualInversion(case.family(), optimizer=adamw(1e-2), num_vectors=2, **tokens)
    return PivotalTuning(case.family(), optimizer=adamw(5e-3), rank=4, alpha=8.0, embedding_lr=5e-2, **tokens)


def load_export(method: str, case: FamilyCase, export: Path, model: DiffusionFineTuner):
    """The family's stock pipeline with the method's export loaded by diffusers' own loaders."""
    if method == "full":
        return case.stock_pipeline(export)
    pipeline = case.stock_pipeline()
    if method in ("lokr", "loha"):
        assert export == kohya_file(export.parent)
        apply_comfyui(pipeline, export, case.family_class.capabilities.lora_components)
    if method in ("lora", "dora", "pivotal_tuning"):
        pipeline.load_lora_weights(str(export.parent if export.suffix else export), weight_name=LORA_WEIGHTS)
    if method in ("textual_inversion", "pivotal_tuning"):
        case.load_embeddings(
            pipeline, (export if export.is_dir() else export.parent) / EMBEDDINGS_FILE, model.tokens.tokens
        )
    return pipeline


def fit_cell(method: str, case: FamilyCase, subject_dir: Path, root: Path) -> Fit:
    steps = STEPS_OF.get(method, STEPS)
    data = subject_data(subject_dir, PROMPT, resolution=case.resolution)
    return fit(build_method(method, case), data, root, steps, every=steps // 2)


METHODS = ["lora", "full", "textual_inversion", "pivotal_tuning"]
#: the adapters' cells: SD 1.x, Qwen-Image and Flux.1 (whose original layers fuse q, k, v), one fast cell per kind
#: and Flux.1's LoKr
ADAPTER_FAMILIES = ("sd1", "qwen-image", "flux")
FAST_ADAPTER_CELLS = {("sd1", "lokr"), ("qwen-image", "dora"), ("qwen-image", "loha"), ("flux", "lokr")}
CELLS = [
    pytest.param(case, method, id=f"{case.name}-{method}", marks=() if method == "lora" else pytest.mark.slow)
    for case in FAMILY_CASES
    for method in METHODS
] + [
    pytest.param(
        case,
        kind,
        id=f"{case.name}-{kind}",
        marks=() if (case.name, kind) in FAST_ADAPTER_CELLS else pytest.mark.slow,
    )
    for case in FAMILY_CASES
    if case.name in ADAPTER_FAMILIES
    for kind in ADAPTERS
]


@pytest.mark.parametrize(("case", "method"), CELLS)
def test_every_method_trains_checkpoints_resumes_and_exports_on_every_family(case, method, subject_dir, tmp_path):
    if method in ("textual_inversion", "pivotal_tuning") and not case.takes_tokens:
        pytest.skip(f"{case.name} takes no new tokens (its capabilities say so; the method refuses it by name)")
    cell, steps = fit_cell(method, case, subject_dir, tmp_path), STEPS_OF.get(method, STEPS)
    assert cell.loss_after < cell.loss_before, (cell.loss_before, cell.loss_after)

    checkpoint = torch.load(cell.checkpoint(steps), weights_only=False)
    assert set(checkpoint["state_dict"]) == set(cell.model.trainable_state_dict())

    fresh, data = build_method(method, case), subject_data(subject_dir, PROMPT, resolution=case.resolution)
    resumed = resumed_losses(fresh, data, tmp_path / "resumed", steps, cell.checkpoint(steps // 2))
    assert sorted(resumed) == list(range(steps // 2 + 1, steps + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(cell.losses[step], rel=1e-5, abs=1e-6)

    export = cell.model.export(tmp_path / "export")
    trained = trained_images(cell.model, PROMPT, case.resolution)
    exported = stock_images(load_export(method, case, export, cell.model), PROMPT, case.resolution)
    untrained = stock_images(case.stock_pipeline(), PROMPT, case.resolution)
    assert np.abs(exported - trained).max() <= 2
    assert np.abs(untrained - trained).max() > 2


@pytest.mark.parametrize("case", [c for c in FAMILY_CASES if not c.takes_tokens], ids=lambda c: c.name)
def test_new_tokens_on_a_family_without_them_name_the_key_and_the_families_that_take_them(case):
    from sdft.errors import UserError

    with pytest.raises(UserError, match=r"model.init_args.family: .* takes no new tokens.*StableDiffusion"):
        build_method("textual_inversion", case).configure_model()


@pytest.mark.parametrize("case", FAMILY_CASES, ids=lambda c: c.name)
def test_sampling_mid_training_leaves_every_module_in_its_mode(case: FamilyCase):
    """A preview puts each module back as it was, one by one: frozen encoders stay in eval mode, so a T5's dropout
    stays off for the rest of training."""
    model = build_method("lora", case)
    model.configure_model()
    model.train()
    for module in model.family.text_encoders().values():
        module.eval()
    before = {name: module.training for name, module in model.named_modules()}
    assert not all(before.values())
    model.generate(["a photo of <sks> toy"], [0], case.resolution, num_inference_steps=1)
    assert {name: module.training for name, module in model.named_modules()} == before
