"""The Z-Image family on its tiny offline model: the pipeline's chat-templated prompt encoding, its latents, the
transformer's list inputs, reversed time and negated output, the rectified-flow objective on the shifted table by
hand, and the ComfyUI-layout LoRA file named by ComfyUI's own key rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ZImagePipeline
from safetensors.torch import load_file
from training import equal_tensors, fit_shipped_config, loaded, stock_images, stock_pipeline, training_noise

from sdft.errors import UserError
from sdft.families import ZImage
from sdft.families.base import Conditioning
from sdft.interop.kohya_names import adaptable_modules
from sdft.methods import LoRAFineTuner, TextualInversion
from sdft.methods.lora import LORA_WEIGHTS, kohya_file
from sdft.tiny_chat_models import build_tiny_zimage

PROMPTS = ["a photo of sks toy", "a dog on the beach, at dusk"]


@pytest.fixture(scope="module")
def family(tiny_zimage) -> ZImage:
    return loaded(ZImage(str(tiny_zimage)))


def test_the_tiny_model_samples_through_the_stock_pipeline_and_is_a_function_of_its_seed(tiny_zimage, tmp_path):
    stock = stock_pipeline(tiny_zimage, ZImage)
    images = stock_images(stock, guidance_scale=4.0)
    assert images.shape == (2, 32, 32, 3) and np.abs(images[0] - images[1]).mean() > 1
    assert stock.scheduler.config.shift == 3.0 and not stock.scheduler.config.use_dynamic_shifting
    again = build_tiny_zimage(tmp_path / "again", seed=0)
    weights = sorted(path.relative_to(again) for path in again.rglob("*.safetensors"))
    assert {path.parts[0] for path in weights} == {"transformer", "vae", "text_encoder"}
    assert all(equal_tensors(load_file(tiny_zimage / path), load_file(again / path)) for path in weights)


def test_the_prompt_goes_through_the_chat_template(family):
    text = family.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a dog"}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert text == "<|im_start|>user\na dog<|im_end|>\n<|im_start|>assistant\n"


def test_conditioning_is_the_pipelines_prompt_encoding(family, tiny_zimage):
    pipeline = ZImagePipeline.from_pretrained(tiny_zimage)
    with torch.no_grad():
        conditioning = family.encode_conditioning({"prompts": PROMPTS}).kwargs
        expected, _ = pipeline.encode_prompt(list(PROMPTS), do_classifier_free_guidance=False)
    states, mask = conditioning["cap_feats"], conditioning["cap_mask"]
    assert states.shape == (2, 512, 40) and mask.dtype == torch.bool
    assert [int(row.sum()) for row in mask] == [len(caption) for caption in expected]
    assert len(expected[0]) != len(expected[1])  # the prompts' lengths differ: the mask is what keeps them apart
    for row, keep, caption in zip(states, mask, expected, strict=True):
        assert torch.equal(row[keep], caption)


def test_latents_are_the_vae_posterior_in_the_space_the_pipeline_decodes(family, tiny_zimage):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        posterior = family.encode_posterior(pixels)
        mean = family.vae.encode(pixels).latent_dist.mean
    config = family.vae.config
    torch.testing.assert_close(posterior.mean, (mean - config.shift_factor) * config.scaling_factor)
    # the pipeline's own latents at this size have the shape of the training latents
    pipeline = ZImagePipeline.from_pretrained(tiny_zimage)
    channels = pipeline.transformer.in_channels
    drawn = pipeline.prepare_latents(2, channels, 32, 32, torch.float32, "cpu", torch.Generator().manual_seed(0))
    assert drawn.shape == posterior.mean.shape


def test_noisy_input_and_velocity_target_on_the_shifted_table_by_hand(tiny_zimage):
    """Uniform level q -> index floor(1000 (1 - q)) -> sigma (1000 - index) / 1000, shifted by Z-Image's static 3:
    3 s / (1 + 2 s); levels 0.5 and 0.9 give 0.75 and 0.9643; the target is noise - x0."""
    family = loaded(ZImage(str(tiny_zimage), weighting_scheme="uniform"))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2), torch.tensor([0.5, 0.9]))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([3 * 0.5 / 2, 3 * 0.9 / 2.8])
    assert (noised.timesteps / 1000).tolist() == pytest.approx(sigma.tolist(), abs=1e-6)
    sigma = sigma[:, None, None, None]
    torch.testing.assert_close(noised.noisy, (1 - sigma) * latents + sigma * noise)
    torch.testing.assert_close(noised.target, noise - latents)


def test_prediction_is_the_negated_transformer_output_at_reversed_time_on_each_caption(family):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noised = training_noise(family, latents, torch.Generator().manual_seed(2), torch.tensor([0.5, 0.9]))
    with torch.no_grad():
        conditioning = family.encode_conditioning({"prompts": PROMPTS})
        predicted = family.predict(noised, conditioning)
        kwargs = conditioning.kwargs
        captions = [kwargs["cap_feats"][i][kwargs["cap_mask"][i]] for i in range(2)]
        output = family.transformer(
            [noised.noisy[i][:, None] for i in range(2)], 1 - noised.timesteps / 1000, captions
        ).sample
        flipped = Conditioning({"cap_feats": kwargs["cap_feats"].flip(0), "cap_mask": kwargs["cap_mask"].flip(0)})
        swapped = family.predict(noised, flipped)
    assert predicted.shape == noised.target.shape
    torch.testing.assert_close(predicted, -torch.stack([sample[:, 0] for sample in output]))
    assert (swapped - predicted).abs().max() > 1e-4  # each image reads its own caption


def comfyui_original_keys(transformer: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The tensors of Tongyi-MAI's checkpoint that ComfyUI's ``comfy.utils.z_image_to_diffusers`` maps a diffusers
    Z-Image transformer's weights to (its table, written out: q, k, v into ``attention.qkv``, ``to_out.0`` to
    ``attention.out``, the ``2-1`` embedders and final layer unkeyed), with their shapes."""
    renames = {"attention.to_out.0.": "attention.out.", "all_x_embedder.2-1.": "x_embedder.",
               "all_final_layer.2-1.": "final_layer."}  # fmt: skip
    found: dict[str, tuple[int, ...]] = {}
    for name, tensor in transformer.state_dict().items():
        if not name.endswith(".weight") or tensor.dim() != 2 or ".lora_" in name:
            continue
        original = name.replace(".base_layer.", ".")  # a module carrying adapters keeps its weight there
        for ours, theirs in renames.items():
            original = original.replace(ours, theirs)
        for projection in ("to_q", "to_k", "to_v"):
            original = original.replace(f"attention.{projection}.", "attention.qkv.")
        rows = found.get(original, (0, tensor.shape[1]))[0]
        found[original] = (
            (rows + tensor.shape[0], tensor.shape[1]) if original.endswith("qkv.weight") else tuple(tensor.shape)
        )
    return found


def test_the_comfyui_file_names_every_module_as_comfyuis_key_rules_map_the_checkpoint(family, tmp_path):
    """ComfyUI maps ``lora_unet_<checkpoint module, dots as underscores>`` onto each 2-D weight of the checkpoint it
    loaded (``model_lora_keys_unet``); every module of the file must be one of those keys, with an update of that
    weight's shape, and together they cover every adapted diffusers module."""
    every_linear = (  # a regex: "adaLN_modulation.0" alone would also name the final layer's SiLU
        r".*(attention\.(to_[qkv]|to_out\.0)|feed_forward\.w[123]|(layers|refiner)\.\d+\.adaLN_modulation\.0|"
        r"all_x_embedder\.2-1|cap_embedder\.1|t_embedder\.mlp\.[02]|"
        r"all_final_layer\.2-1\.(linear|adaLN_modulation\.1))"
    )
    model = LoRAFineTuner(ZImage(family.pretrained_model_name_or_path), rank=4, target_modules=every_linear)
    model.configure_model()
    state = load_file(kohya_file(model.export(tmp_path / "export").parent))
    originals = comfyui_original_keys(model.family.transformer)
    comfyui = {"lora_unet_" + key.removesuffix(".weight").replace(".", "_"): shape for key, shape in originals.items()}
    modules = {key.split(".")[0] for key in state}
    assert modules <= set(comfyui), sorted(modules - set(comfyui))[:5]
    for module in modules:
        update = state[f"{module}.lora_up.weight"] @ state[f"{module}.lora_down.weight"]
        assert tuple(update.shape) == comfyui[module], module
    fused = [m for m in modules if m.endswith("_attention_qkv")]
    adapted = adaptable_modules(model.family.transformer)
    assert len(fused) == sum(name.endswith("attention.to_q") for name in adapted) == 6  # 2 layers, 2 + 2 refiners
    assert len(modules) == len(adapted) - 2 * len(fused)  # q, k, v in one module; every other module its own


def test_new_tokens_and_bad_options_are_refused_by_name(tiny_zimage):
    model = TextualInversion(ZImage(str(tiny_zimage)), placeholder_token="<sks>", initializer_token="toy")
    with pytest.raises(UserError, match=r"family: ZImage takes no new tokens.* StableDiffusion\b"):
        model.configure_model()
    with pytest.raises(UserError, match="model.init_args.family.init_args.max_sequence_length must be in"):
        ZImage("builtin:tiny-zimage", max_sequence_length=0)
    with pytest.raises(UserError, match="model.init_args.family.init_args.weighting_scheme must be one of"):
        ZImage("builtin:tiny-zimage", weighting_scheme="none")


@pytest.mark.slow
@pytest.mark.parametrize("config", ["dreambooth_lora", "dreambooth"])
def test_the_shipped_configs_fit_the_tiny_model_with_class_images_from_its_pipeline(config, tmp_path):
    cpu = "--model.init_args.speed.frozen_dtype=float32"  # bf16 frozen weights need bf16-mixed, unlike a CPU fit
    run = fit_shipped_config(f"configs/zimage/{config}.yaml", tmp_path, "builtin:tiny-zimage", cpu)
    assert len(list((tmp_path / "class").glob("*.png"))) == 2  # made by ZImagePipeline from the base weights
    assert (run / "evaluation" / "selection.json").is_file()
    if config == "dreambooth":
        assert isinstance(stock_pipeline(run / "final", ZImage), ZImagePipeline)
    else:
        assert (run / "final" / LORA_WEIGHTS).is_file() and kohya_file(run / "final") is not None
