"""Weights that cannot be downloaded (the tests run offline) are one line naming them and the local alternative."""

from __future__ import annotations

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

from sdft.downloads import download_error, fetches_weights
from sdft.errors import UserError
from sdft.evaluation.backbones import load_clip, load_dino
from sdft.families import StableDiffusion

CLIP_LOCAL = "transformers:<a CLIPModel folder>, or builtin:tiny-clip to try the tools without it"


def test_a_dino_backbone_not_in_the_cache_names_the_spec_and_the_local_alternative():
    load = fetches_weights("dino_model", "a ViT folder's path")(load_dino)
    with pytest.raises(UserError) as error:
        load("sdft-tests/no-such-dino")
    assert str(error.value) == (
        "dino_model sdft-tests/no-such-dino cannot be downloaded: offline mode is on (HF_HUB_OFFLINE), and they are "
        "not in the local cache; download them once with a network (they stay in the cache), or set dino_model to a "
        "local copy: a ViT folder's path"
    )


def test_a_hub_file_the_loader_names_is_told():
    def load_open_clip(spec: str = "open_clip:ViT-B-32/openai"):  # open_clip's errors when offline, innermost first
        url = "https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_pytorch_model.bin"
        try:
            try:
                raise OfflineModeIsEnabled(f"Cannot reach {url}: offline mode is enabled.")
            except OfflineModeIsEnabled as error:
                raise LocalEntryNotFoundError("cannot find the requested files in the local cache") from error
        except LocalEntryNotFoundError as error:
            raise RuntimeError("Failed to download weights for tag 'openai'") from error

    with pytest.raises(UserError) as error:
        fetches_weights("clip_model", CLIP_LOCAL)(load_open_clip)()
    message = str(error.value)
    assert message.startswith(
        "clip_model open_clip:ViT-B-32/openai (hub: timm/vit_base_patch32_clip_224.openai "
        "(open_clip_pytorch_model.bin)) cannot be downloaded: "
    )
    assert message.endswith(f"set clip_model to a local copy: {CLIP_LOCAL}") and "\n" not in message


def test_other_errors_are_not_download_errors():
    assert download_error(ValueError("a bug")) is None
    load = fetches_weights("clip_model", CLIP_LOCAL)(load_clip)
    with pytest.raises(ValueError, match="unknown CLIP spec"):
        load("nonsense")


def test_a_base_model_not_in_the_cache_names_the_key_the_model_and_the_component():
    family = StableDiffusion("sdft-tests/no-such-model")
    with pytest.raises(UserError) as error:
        family.load()
    message = str(error.value)
    assert message.startswith(
        "model.init_args.family.init_args.pretrained_model_name_or_path sdft-tests/no-such-model (text_encoder) "
        "cannot be downloaded: offline mode is on (HF_HUB_OFFLINE)"
    )
    assert message.endswith(
        "give a local diffusers folder in its place (huggingface-cli download <id> --local-dir <folder>)"
    )
