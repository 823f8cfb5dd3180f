"""Built-in assets, named ``builtin:<name>``: tiny models and sample data that sdft generates instead of downloading.

Wherever a model path or a data folder is expected, ``builtin:tiny-sd1``, ``builtin:toy-subject``,
``builtin:toy-class`` or ``builtin:toy-captions`` (captioned toys, ``metadata.jsonl``) may stand instead; so may the
toy world's (:mod:`sdft.toyworld`): ``builtin:toyworld``, the trained base model that sdft ships,
``builtin:toyworld-scenes``, captioned scenes, and ``builtin:toyworld-creature``, photos of its novel subject with
its evaluation prompts in ``prompts.txt``.
:func:`resolve` builds the asset once into the cache folder (``$SDFT_CACHE``, default ``~/.cache/sdft``) and returns
the ordinary folder, so the code that reads it is the code that reads real models and real photos.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sdft.errors import UserError
from sdft.files import write_folder_atomic


# The builders import what they need when called: resolving a path must not load diffusers or the data package.
def _tiny_sd1(folder: Path) -> object:
    from sdft.tiny_models import build_tiny_sd1

    return build_tiny_sd1(folder)


def _tiny_model(builder: str) -> Callable[[Path], object]:
    def build(folder: Path) -> object:
        from sdft import tiny_models

        return getattr(tiny_models, builder)(folder)

    return build


def _toy(writer: str, **options) -> Callable[[Path], object]:
    def build(folder: Path) -> object:
        from sdft.data import toy

        return getattr(toy, writer)(folder, **options)

    return build


def _tiny_flow_model(builder: str) -> Callable[[Path], object]:
    def build(folder: Path) -> object:
        from sdft import tiny_transformer_models

        return getattr(tiny_transformer_models, builder)(folder)

    return build


def _tiny_chat_model(builder: str) -> Callable[[Path], object]:
    def build(folder: Path) -> object:
        from sdft import tiny_chat_models

        return getattr(tiny_chat_models, builder)(folder)

    return build


def _toy_world(folder: Path) -> object:
    from sdft.toyworld import world_dataset, write_folder

    return write_folder(folder, world_dataset(seed=0, count=TOY_WORLD_SIZE))


def _toy_creature(folder: Path) -> object:
    from sdft.toyworld import subject_photos

    return subject_photos(folder)


def _toyworld(folder: Path) -> object:
    from sdft.toyworld.model import unpack_shipped

    return unpack_shipped(folder)


def _toyworld_version() -> str:
    from sdft.toyworld.model import shipped_version

    return shipped_version()


#: captioned scenes in ``builtin:toyworld-scenes``
TOY_WORLD_SIZE = 1024
PREFIX = "builtin:"
BUILDERS: dict[str, Callable[[Path], object]] = {
    "tiny-sd1": _tiny_sd1,
    "tiny-sd2-v": _tiny_model("build_tiny_sd2_v"),
    "tiny-sdxl": _tiny_model("build_tiny_sdxl"),
    "tiny-sd3": _tiny_flow_model("build_tiny_sd3"),
    "tiny-flux": _tiny_flow_model("build_tiny_flux"),
    "tiny-zimage": _tiny_chat_model("build_tiny_zimage"),
    "tiny-flux2-klein": _tiny_chat_model("build_tiny_flux2_klein"),
    "tiny-flux2-dev": _tiny_chat_model("build_tiny_flux2_dev"),
    "tiny-qwen-image": _tiny_chat_model("build_tiny_qwen_image"),
    "toy-subject": _toy("write_toy_subject"),
    "toy-class": _toy("write_toy_class", num_images=8),
    "toy-captions": _toy("write_toy_captions"),
    "toyworld-scenes": _toy_world,
    "toyworld-creature": _toy_creature,
    "toyworld": _toyworld,
}
#: assets unpacked from files sdft ships: cached under a name that changes with those files
VERSIONS: dict[str, Callable[[], str]] = {"toyworld": _toyworld_version}


def cache_dir() -> Path:
    """Where built-in assets are written: ``$SDFT_CACHE`` or ``~/.cache/sdft``."""
    return Path(os.environ.get("SDFT_CACHE", Path.home() / ".cache" / "sdft"))


def resolve(name_or_path: str) -> str:
    """Return ``name_or_path`` unchanged, or the folder of the built-in asset it names, building it if needed.

    Args:
        name_or_path: a hub id, a local path, or ``builtin:<name>``.
    """
    if not name_or_path.startswith(PREFIX):
        return name_or_path
    name = name_or_path.removeprefix(PREFIX)
    if name not in BUILDERS:
        available = ", ".join(sorted(PREFIX + known for known in BUILDERS))
        raise UserError(f"unknown built-in asset {name_or_path!r}; use one of {available}, or a path or hub id")
    folder = cache_dir() / (f"{name}-{VERSIONS[name]()}" if name in VERSIONS else name)
    if not folder.is_dir():  # built once; concurrent builders (ranks on one node) race harmlessly
        write_folder_atomic(folder, BUILDERS[name], replace=False)
    return str(folder)
