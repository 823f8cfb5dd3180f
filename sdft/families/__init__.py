"""Model families: how each kind of text-to-image model loads, encodes, noises and samples."""

from sdft.families.base import ModelFamily, NoisedLatents
from sdft.families.flux import Flux
from sdft.families.flux2 import Flux2, Flux2Klein
from sdft.families.qwen_image import QwenImage
from sdft.families.stable_diffusion import StableDiffusion
from sdft.families.stable_diffusion_3 import StableDiffusion3
from sdft.families.stable_diffusion_xl import StableDiffusionXL
from sdft.families.z_image import ZImage

__all__ = [
    "Flux",
    "Flux2",
    "Flux2Klein",
    "ModelFamily",
    "NoisedLatents",
    "QwenImage",
    "StableDiffusion",
    "StableDiffusion3",
    "StableDiffusionXL",
    "ZImage",
]
