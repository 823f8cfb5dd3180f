"""The toy world's base model: Stable Diffusion 1.x's architecture small enough to learn the world on a CPU.

The model reads and draws 64 px images, the size the world is drawn and the oracle reads at. Its parts are SD 1.x's
classes with SD 1.x's block types, saved as an ordinary diffusers folder, so :class:`sdft.families.StableDiffusion`
and every method load it through ``from_pretrained`` unchanged:

- a KL autoencoder of three levels (32, 64, 64 channels): a spatial factor of 4, so a 64 px image is a 16x16x4
  latent (SD 1.x's factor of 8 would leave a small object two latent pixels wide, too few for its shape and
  pattern); its ``scaling_factor`` is set after training to the inverse standard deviation of the latents, as SD's
  0.18215 was;
- a two-layer CLIP text encoder of width 64 over the real 49,408-token CLIP vocabulary, read by the real CLIP BPE
  tokenizer (77 tokens, padded with the end token, as SD 1.x's);
- a UNet of three levels (32, 64, 128 channels) with cross-attention at 16x16 and 8x8 and none at 4x4, as SD 1.x has
  cross-attention in every level but the last, one layer per block (the widest level is the cheapest: 4x4);
- SD 1.x's scaled-linear noise schedule (1,000 steps, epsilon prediction) with its DDIM sampler.

That is the shipped :data:`GEOMETRIES` ``factor4``. At a factor of 4 the novel subject's eyes are one latent pixel
and no autoencoder of that shape draws them back; ``factor2`` (two autoencoder levels of 32 and 64 channels, no
self-attention in its middle block, where it would cost 40% of a step over 1,024 positions and a latent pixel needs
only its neighbours) makes a 64 px image a 32x32x4 latent in which the eyes and the hat's brim span several latent
pixels, and its UNet puts one attention-free level of 32 channels at 32x32 in front of the shipped UNet's three
(attention at 16x16 and 8x8, none at 4x4), so attention sees as many pixels per position as it does today.

:func:`toyworld_modules` builds the untrained parts; :func:`build_untrained_toyworld` saves them as a model folder
(for fast tests), and ``scripts/train_toyworld.py`` trains them. :func:`ship` stores a trained folder in the package
(``SHIPPED``: half-precision weights, configs, ``training.json``; 15 MB instead of 33) and :func:`unpack_shipped`
writes it back out as an ordinary diffusers folder, which is what ``builtin:toyworld`` resolves to.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdft.errors import UserError
from sdft.files import write_folder_atomic
from sdft.tiny_models import clip_tokenizer, save_pipeline, sd_pipeline, seeded, tiny_clip_config

#: the side of the images the model reads and draws, in pixels
IMAGE_SIZE = 64
#: the shipped autoencoder's channels per level; each level after the first halves the side
VAE_CHANNELS = (32, 64, 64)
#: how many pixels one of the shipped model's latent pixels spans along a side
VAE_FACTOR = 2 ** (len(VAE_CHANNELS) - 1)
LATENT_SIZE = IMAGE_SIZE // VAE_FACTOR
LATENT_CHANNELS = 4
#: the width of the text encoder's hidden states, which the UNet attends to
TEXT_WIDTH = 64
TEXT_LAYERS = 2
UNET_CHANNELS = (32, 64, 128)
#: attention heads per UNet level (diffusers' SD 1.x configs call this ``attention_head_dim``)
UNET_HEADS = 4
NORM_GROUPS = 8


@dataclass(frozen=True)
class Geometry:
    """The shapes of the autoencoder and the UNet, which fix the latent grid.

    Args:
        vae_channels: the autoencoder's channels per level; each level after the first halves the side.
        vae_attention: whether the autoencoder's middle block (at the latent side) has self-attention.
        unet_channels: the UNet's channels per level, from the latent side down; each level after the first halves
            the side.
        unet_attention: per UNet level, whether its blocks attend (to themselves and to the text).
    """

    vae_channels: tuple[int, ...]
    vae_attention: bool
    unet_channels: tuple[int, ...]
    unet_attention: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.unet_attention) != len(self.unet_channels):
            raise ValueError(
                f"Geometry.unet_attention has {len(self.unet_attention)} levels and unet_channels "
                f"{len(self.unet_channels)}; give one flag per UNet level"
            )

    @property
    def factor(self) -> int:
        """How many pixels one latent pixel spans along a side."""
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        """The side of a 64 px image's latent."""
        return IMAGE_SIZE // self.factor


#: the autoencoder and UNet shapes by name: ``factor4`` is the shipped model's, ``factor2`` the finer one
GEOMETRIES = {
    "factor4": Geometry(VAE_CHANNELS, True, UNET_CHANNELS, (True, True, False)),
    "factor2": Geometry((32, 64), False, (32, 64, 128, 128), (False, True, True, False)),
}
#: the geometry of the shipped weights, and of :func:`toyworld_modules` unless told otherwise
SHIPPED_GEOMETRY = GEOMETRIES["factor4"]
#: the trained base model shipped with sdft (see :func:`ship`)
SHIPPED = Path(__file__).resolve().parent / "weights" / "base"
#: the text encoder's weights in a model folder, and its token table (one row per CLIP token)
TEXT_ENCODER_WEIGHTS, TOKEN_TABLE = "text_encoder/model.safetensors", "embeddings.token_embedding.weight"
#: the command that trains and ships it
TRAIN_COMMAND = (
    "uv run python scripts/train_toyworld.py --output toyworld --seed 0 --vae-steps 1000 --unet-steps 5000 --threads 2 "
    "--ship sdft/toyworld/weights/base"
)


def toyworld_vae(scaling_factor: float = 1.0, geometry: Geometry = SHIPPED_GEOMETRY) -> AutoencoderKL:
    """The untrained autoencoder: the geometry's levels, ``LATENT_CHANNELS`` latent channels.

    Args:
        scaling_factor: what latents are multiplied by before the UNet sees them (training measures it).
        geometry: the autoencoder's levels and whether its middle block attends.
    """
    levels = len(geometry.vae_channels)
    return AutoencoderKL(
        block_out_channels=geometry.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=NORM_GROUPS,
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
        mid_block_add_attention=geometry.vae_attention,
    )


def toyworld_text_encoder() -> CLIPTextModel:
    """The untrained text encoder: OpenAI CLIP's style (quick GELU, padded with its end token) at ``TEXT_WIDTH``."""
    config = tiny_clip_config(hidden_size=TEXT_WIDTH)
    config.num_hidden_layers, config.intermediate_size = TEXT_LAYERS, 4 * TEXT_WIDTH
    return CLIPTextModel(config)


def toyworld_unet(geometry: Geometry = SHIPPED_GEOMETRY) -> UNet2DConditionModel:
    """The untrained UNet over the geometry's latents, attending to ``TEXT_WIDTH``-wide text states.

    Args:
        geometry: the UNet's levels and which of them attend; its autoencoder fixes the latent side.
    """
    attends = geometry.unet_attention
    return UNet2DConditionModel(
        sample_size=geometry.latent_size,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=geometry.unet_channels,
        layers_per_block=1,
        down_block_types=tuple("CrossAttnDownBlock2D" if attend else "DownBlock2D" for attend in attends),
        up_block_types=tuple("CrossAttnUpBlock2D" if attend else "UpBlock2D" for attend in reversed(attends)),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=UNET_HEADS,
        norm_num_groups=NORM_GROUPS,
    )


def toyworld_modules(
    geometry: Geometry = SHIPPED_GEOMETRY,
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """The untrained UNet, autoencoder and text encoder, in construction order (the order :func:`seeded` needs).

    Args:
        geometry: the autoencoder's and the UNet's shapes.
    """
    return toyworld_unet(geometry), toyworld_vae(geometry=geometry), toyworld_text_encoder()


def toyworld_pipeline(
    modules: tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel], tokenizer: CLIPTokenizer
) -> StableDiffusionPipeline:
    """The SD 1.x pipeline of the modules (in :func:`toyworld_modules`' order): SD's DDIM sampler, epsilon
    prediction, no safety checker."""
    return sd_pipeline(modules, tokenizer, "epsilon")


def build_untrained_toyworld(directory: str | Path, seed: int = 0, geometry: Geometry = SHIPPED_GEOMETRY) -> Path:
    """Save the untrained architecture as a diffusers folder (safetensors) and return the folder: what the trained
    model looks like to every loader, in a second.

    Args:
        directory: where to write the model folder.
        seed: the weights are a function of this seed alone.
        geometry: the autoencoder's and the UNet's shapes.
    """
    directory = Path(directory)
    modules = seeded(seed, lambda: toyworld_modules(geometry))
    return save_pipeline(toyworld_pipeline(modules, clip_tokenizer(directory / "tokenizer")), directory)


def ship(trained: str | Path, target: str | Path, seed: int | None = None) -> Path:
    """Store a trained model folder in the form sdft ships: every floating-point weight in float16 (half the bytes;
    the rounding, 2^-11 of a weight, changes no sample visibly), the configs, the scheduler and ``training.json``; no
    tokenizer, which :func:`unpack_shipped` writes from sdft's own CLIP vocabulary; and of the text encoder's
    49,408-row token table only the rows training changed (the world's captions use a few dozen tokens, and AdamW
    without weight decay leaves the others at their seeded initial values, which unpacking draws again).
    ``target`` is replaced whole.

    Args:
        trained: the folder ``scripts/train_toyworld.py`` wrote.
        target: the folder to write, normally ``SHIPPED``.
        seed: the seed the weights were initialised from; None reads it from ``training.json``.
    """
    trained, target = Path(trained), Path(target)
    if seed is None:
        seed = int(json.loads((trained / "training.json").read_text())["seed"])

    def build(staging: Path) -> None:
        _copy_cast(trained, staging, torch.float16, skip="tokenizer")
        file = staging / TEXT_ENCODER_WEIGHTS
        state = load_file(file)
        table = state.pop(TOKEN_TABLE)
        rows = (table != _initial_token_table(seed, trained).to(table.dtype)).any(dim=1).nonzero().flatten()
        state |= {
            f"{TOKEN_TABLE}.rows": rows,
            f"{TOKEN_TABLE}.trained": table[rows],
            f"{TOKEN_TABLE}.seed": torch.tensor(seed),
        }
        save_file(state, file, metadata={"format": "pt"})

    write_folder_atomic(target, build)
    return target


def unpack_shipped(folder: str | Path, shipped: str | Path | None = None) -> Path:
    """Write the shipped model (see :func:`ship`) into ``folder`` as an ordinary diffusers folder: float32 weights,
    configs, scheduler, the CLIP tokenizer and ``training.json``. Returns the folder.

    Args:
        folder: the (new) folder to write into.
        shipped: the shipped form; None for ``SHIPPED``.
    """
    folder, shipped = Path(folder), Path(shipped or SHIPPED)
    if not (shipped / "model_index.json").is_file():
        raise UserError(f"the toy world's base model is not in {shipped}; train and ship it with: {TRAIN_COMMAND}")
    _copy_cast(shipped, folder, torch.float32)
    file = folder / TEXT_ENCODER_WEIGHTS
    state = load_file(file)
    rows, trained = state.pop(f"{TOKEN_TABLE}.rows"), state.pop(f"{TOKEN_TABLE}.trained")
    seed = int(state.pop(f"{TOKEN_TABLE}.seed"))
    table = _initial_token_table(seed, folder).half().float()  # as shipped, then unpacked
    table[rows] = trained
    save_file(state | {TOKEN_TABLE: table}, file, metadata={"format": "pt"})
    clip_tokenizer(folder / "tokenizer")
    return folder


def shipped_version(shipped: str | Path | None = None) -> str:
    """A short digest of the shipped weights (``SHIPPED`` when None): a cached unpacked copy of other weights is
    never reused."""
    shipped, digest = Path(shipped or SHIPPED), hashlib.sha256()
    for path in sorted(Path(shipped).rglob("*.safetensors")):
        digest.update(path.relative_to(shipped).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _initial_token_table(seed: int, folder: Path) -> torch.Tensor:
    """The text encoder's token table as a model folder's architecture initialises it from ``seed``: its UNet,
    autoencoder and text encoder built from their configs in :func:`toyworld_modules`' order (the UNet's and the
    autoencoder's shapes decide how many draws come before the table's)."""

    def build() -> CLIPTextModel:
        UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        return CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))

    return seeded(seed, build).state_dict()[TOKEN_TABLE]


def _copy_cast(source: Path, target: Path, dtype: torch.dtype, skip: str | None = None) -> None:
    """Copy the files of ``source`` into ``target``, safetensors with their floating-point tensors in ``dtype``,
    leaving out the top-level folder ``skip``."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir() or relative.parts[0] == skip:
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            save_file(_cast(load_file(path), dtype), target / relative, metadata={"format": "pt"})
        else:
            shutil.copyfile(path, target / relative)


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The floating-point tensors of ``state`` in ``dtype``, the others unchanged."""
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in state.items()}
