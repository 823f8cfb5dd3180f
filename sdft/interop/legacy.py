"""Legacy PyTorch pickles (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) rewritten as ``.safetensors``:
``sdft convert``.

Loading a pickle can run any code the file names. These files are loaded only with
``torch.load(path, map_location="cpu", weights_only=True)``, whose unpickler builds tensors, containers, numbers and
strings and refuses every other class or function; a file that needs one (a custom class, a ``__reduce__`` payload)
is refused with one line naming it, and nothing in it runs. That reads both formats ``torch.save`` writes (the zip
archive and the older plain stream); a plain Python pickle (``pickle.dump``) is refused, because its tensors can only
be rebuilt by a function that unpickles with no restriction.

What is written, by kind of file:

- ``embedding``: an A1111 ``.pt`` (``{"string_to_param": {"*": vectors}, "name": ..., "step": ...}``) becomes
  ``{"emb_params": vectors}``, the layout sdft writes for A1111 and ComfyUI (:data:`sdft.methods.tokens.A1111_KEY`),
  its name and step in the header; a diffusers ``learned_embeds.bin`` (``{token: vectors}``) and an SDXL embedding
  (``clip_l`` and ``clip_g``) keep their keys: diffusers reads the token from the key, and A1111 and ComfyUI read a
  one-tensor file whatever its key;
- ``checkpoint``: the tensors of a ``state_dict`` entry (Lightning, CompVis), or of a bare state dict; its other
  top-level numbers and strings (``global_step``) go to the header, everything else (optimizer state) is dropped;
- ``lora``: every tensor, under its own key.

Nested dicts become dotted keys (``{"a": {"b": t}}`` -> ``a.b``); numbers and strings go to the safetensors header as
strings; other values are dropped, and the report says which. Tensors that share memory or are not contiguous are
copied, as safetensors requires.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdft.errors import UserError
from sdft.files import write_named_atomic

if TYPE_CHECKING:
    from torch import Tensor

#: the key of an A1111 / ComfyUI embedding (:data:`sdft.methods.tokens.A1111_KEY`)
A1111_KEY = "emb_params"
SDXL_EMBEDDING_KEYS = frozenset({"clip_l", "clip_g"})
#: words in tensor names that only LoRA-style adapters use (peft, kohya, diffusers attention processors, LyCORIS)
LORA_WORDS = ("lora", "hada_", "lokr_")
ZIP_SIGNATURE = b"PK\x03\x04"
PICKLE_PROTOCOL_OPCODE = b"\x80"
SCALARS = (str, int, float, bool)
SHOWN = 5


@dataclass
class Conversion:
    """What :func:`convert` found in a file and wrote.

    Attributes:
        input: the legacy file.
        output: the ``.safetensors`` file written.
        kind: ``lora``, ``embedding`` or ``checkpoint``.
        tensors: the tensors written, by key.
        metadata: the header entries written (strings).
        dropped: what was not written, one note per entry.
    """

    input: Path
    output: Path
    kind: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    @property
    def num_bytes(self) -> int:
        """The size of the tensors' data."""
        return sum(tensor.numel() * tensor.element_size() for tensor in self.tensors.values())

    def report(self) -> str:
        """What was found and written, for people: kind, tensor count and size, header entries, what was dropped."""
        count = len(self.tensors)
        lines = [
            f"{self.input}: {self.kind}, {count} tensor{'s' * (count != 1)}, {self.num_bytes:,} bytes -> {self.output}"
        ]
        if self.metadata:
            lines.append("header: " + ", ".join(f"{key}={value}" for key, value in self.metadata.items()))
        lines += [f"dropped: {note}" for note in self.dropped]
        return "\n".join(lines)


def convert(input: Path, output: Path | None = None, overwrite: bool = False) -> Conversion:
    """Convert a legacy PyTorch file (LoRA, embedding or checkpoint) to .safetensors, running no code from it.

    Prints what it found: the kind, the tensors and their size, the header entries kept and anything dropped.

    Args:
        input: a ``.bin``, ``.pt``, ``.pth``, ``.ckpt`` or ``.pkl`` file written by ``torch.save``.
        output: the ``.safetensors`` file to write, or a folder to write ``<input stem>.safetensors`` in; when
            omitted, ``<input stem>.safetensors`` beside the input.
        overwrite: replace an existing output file.
    """
    input = Path(input)
    target = output_file(input, None if output is None else Path(output))
    check_paths(input, target, overwrite)
    conversion = contents_of(load_weights_only(input), input, target)
    write_safetensors(target, conversion.tensors, conversion.metadata)
    print(conversion.report())
    return conversion


def output_file(input: Path, output: Path | None) -> Path:
    """The file to write: ``output``, ``<output>/<stem>.safetensors`` for a folder, else beside the input."""
    if output is None:
        return input.with_suffix(".safetensors")
    if output.is_dir():
        return output / f"{input.stem}.safetensors"
    if output.suffix != ".safetensors":
        raise UserError(f"--output {output} must end in .safetensors (or be an existing folder)")
    return output


def check_paths(input: Path, output: Path, overwrite: bool) -> None:
    """Raise unless ``input`` is a legacy file to convert and ``output`` may be written."""
    if not input.is_file():
        state = "is a folder, not a file" if input.is_dir() else "does not exist"
        raise UserError(f"{input} {state}; give the .bin, .pt, .ckpt or .pkl file to convert")
    if input.suffix == ".safetensors":
        raise UserError(f"{input} is already a .safetensors file; nothing to convert")
    if output.exists() and not overwrite:
        raise UserError(f"{output} exists; choose another --output, or pass --overwrite true to replace it")


# -- loading ---------------------------------------------------------------------------------------------------------


def load_weights_only(path: Path) -> Any:
    """A ``torch.save`` file's contents, loaded with torch's weights-only unpickler (on the CPU); one-line
    :class:`UserError` for a file that is not one, is damaged, or would run code.

    Args:
        path: the file.
    """
    import torch

    zipped = check_pickle_format(path)
    try:  # a zip archive's tensors are mapped from the file, not read into memory (only legacy streams must be)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):
            raise unreadable(path, error) from error
        raise runs_code(path, error) from error
    except Exception as error:  # torch reports damaged files as RuntimeError, EOFError, KeyError, ...
        raise unreadable(path, error) from error


def check_pickle_format(path: Path) -> bool:
    """Whether ``path`` is a zip archive; raise unless it starts like a file ``torch.save`` writes: a zip archive,
    or the legacy stream (a pickle of torch's magic number). Nothing of the file is unpickled here."""
    import torch

    with path.open("rb") as file:
        head = file.read(32)
    legacy = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)
    if head.startswith(ZIP_SIGNATURE) or head.startswith(legacy):
        return head.startswith(ZIP_SIGNATURE)
    if not head:
        raise UserError(f"{path} is empty (0 bytes); download or copy it again")
    if head.startswith(PICKLE_PROTOCOL_OPCODE):
        raise UserError(
            f"{path} is a plain Python pickle (pickle.dump), not a torch.save file; its tensors can only be "
            f"rebuilt by unpickling it without restriction, which could run code from the file, so sdft does not; "
            f"re-save it with torch.save from a Python you trust, or get a .safetensors release"
        )
    raise UserError(f"{path} is not a PyTorch file (torch.save writes a zip archive or a pickle); nothing to convert")


def runs_code(path: Path, error: Exception) -> UserError:
    """The refusal of a file that names code for the unpickler to run (the names are read from torch's error)."""
    names = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))
    what = ", ".join(names) if names else "a class or function"
    return UserError(
        f"{path} was not loaded: loading it would run code named in the file ({what}), and sdft runs no code from a "
        f"file, only reads tensors, numbers and strings; get a .safetensors release, or re-save its tensors with "
        f"torch.save from a Python you trust"
    )


def unreadable(path: Path, error: Exception) -> UserError:
    """The error for a file torch cannot read as a checkpoint (truncated or damaged)."""
    if isinstance(error, EOFError):
        detail = "it ends too early"
    else:  # the first sentence: torch's own messages go on to advice that does not apply here
        detail = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(f"{path} could not be read as a PyTorch file ({detail}); it may be truncated: copy it again")


# -- what the file holds ---------------------------------------------------------------------------------------------


def contents_of(loaded: Any, input: Path, output: Path) -> Conversion:
    """Sort a loaded file into the tensors and header entries to write, by its kind (see the module docstring).

    Args:
        loaded: what ``torch.load`` returned.
        input: the file, for messages.
        output: the file that will be written.
    """
    if not isinstance(loaded, Mapping):
        raise UserError(f"{input} holds a {type(loaded).__name__}, not a dict of tensors; nothing to convert")
    if "string_to_param" in loaded:
        conversion = a1111_embedding(loaded, input, output)
    elif isinstance(loaded.get("state_dict"), Mapping):
        conversion = checkpoint(loaded, input, output)
    else:
        conversion = Conversion(input, output, "")
        sort_leaves(flatten(loaded), conversion)
        conversion.kind = kind_of(conversion.tensors)
    if not conversion.tensors:
        raise UserError(f"{input} holds no tensors; nothing to convert")
    conversion.tensors = standalone(conversion.tensors)
    return conversion


def a1111_embedding(loaded: Mapping[str, Any], input: Path, output: Path) -> Conversion:
    """An A1111 textual-inversion ``.pt``: its vectors as ``emb_params``, its top-level name and step in the header.

    Args:
        loaded: ``{"string_to_param": {"*": vectors}, "string_to_token": ..., "name": ..., "step": ..., ...}``.
        input: the file, for messages.
        output: the file that will be written.
    """
    import torch

    params = loaded["string_to_param"]
    vectors = list(params.values()) if isinstance(params, Mapping) else []
    if len(vectors) != 1 or not isinstance(vectors[0], torch.Tensor):
        raise UserError(f"{input}: string_to_param must hold one tensor, as A1111 embeddings do; found {len(vectors)}")
    conversion = Conversion(input, output, "embedding", {A1111_KEY: vectors[0]})
    for key, value in loaded.items():
        if key == "string_to_token":
            conversion.dropped.append("string_to_token (the trainer's token ids; A1111 assigns its own)")
        elif key != "string_to_param":
            keep_scalar(key, value, conversion)
    return conversion


def checkpoint(loaded: Mapping[str, Any], input: Path, output: Path) -> Conversion:
    """A checkpoint with a ``state_dict``: its tensors, and the other top-level numbers and strings as header entries.

    Args:
        loaded: ``{"state_dict": {...}, "global_step": ..., "optimizer_states": ..., ...}``.
        input: the file, for messages.
        output: the file that will be written.
    """
    conversion = Conversion(input, output, "")
    sort_leaves(flatten(loaded["state_dict"]), conversion)
    conversion.kind = "lora" if kind_of(conversion.tensors) == "lora" else "checkpoint"
    for key, value in loaded.items():
        if key != "state_dict":
            keep_scalar(key, value, conversion)
    return conversion


def keep_scalar(key: str, value: Any, conversion: Conversion) -> None:
    """Put a number or string into the header; note anything else as dropped (it is not model weights)."""
    if isinstance(value, SCALARS):
        conversion.metadata[str(key)] = str(value)
    elif value is not None:
        tensors = sum(1 for _, leaf in flatten({key: value}) if is_tensor(leaf))
        content = f"{tensors} tensor{'s' * (tensors != 1)}, " if tensors else ""
        conversion.dropped.append(f"{key} ({content}not model weights)")


def flatten(tree: Mapping[Any, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The leaves of nested dicts, lists and tuples, by dotted key; a list of numbers and strings is one leaf.

    Args:
        tree: a dict as loaded.
        prefix: prepended to every key.
    """
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, f"{name}.")
        elif isinstance(value, (list, tuple)) and not all(isinstance(item, SCALARS) for item in value):
            yield from flatten(dict(enumerate(value)), f"{name}.")
        else:
            yield name, value


def sort_leaves(leaves: Iterator[tuple[str, Any]], conversion: Conversion) -> None:
    """Tensors to ``conversion.tensors``, numbers and strings (and lists of them) to its header, the rest noted."""
    others = []
    for key, value in leaves:
        if is_tensor(value):
            conversion.tensors[key] = value
        elif isinstance(value, SCALARS):
            conversion.metadata[key] = str(value)
        elif isinstance(value, (list, tuple)):
            conversion.metadata[key] = json.dumps(list(value))
        else:
            others.append(f"{key} ({type(value).__name__})")
    if others:
        shown = ", ".join(others[:SHOWN]) + (f" and {len(others) - SHOWN} more" if len(others) > SHOWN else "")
        conversion.dropped.append(f"{len(others)} entries that are neither tensors, numbers nor strings: {shown}")


def is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def kind_of(tensors: Mapping[str, Tensor]) -> str:
    """``lora`` if any name is a LoRA-style adapter's, ``embedding`` for a diffusers or SDXL embedding (one
    undotted tensor of vectors, or ``clip_l`` and ``clip_g``), else ``checkpoint``."""
    if any(word in key.lower() for key in tensors for word in LORA_WORDS):
        return "lora"
    vectors = all(tensor.dim() in (1, 2) for tensor in tensors.values())
    if vectors and (set(tensors) == SDXL_EMBEDDING_KEYS or (len(tensors) == 1 and "." not in next(iter(tensors)))):
        return "embedding"
    return "checkpoint"


def standalone(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors as safetensors can write them: detached, contiguous, and none sharing memory with another (a
    tensor whose memory an earlier one uses is copied)."""
    import torch

    seen: set[int] = set()
    result = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        address = tensor.untyped_storage().data_ptr()
        if not tensor.is_contiguous() or address in seen:
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        seen.add(tensor.untyped_storage().data_ptr())
        result[key] = tensor
    return result


def write_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` and header ``metadata`` atomically: into a hidden sibling, then renamed over ``path``."""
    from safetensors.torch import save_file

    # streamed: no second copy in memory
    write_named_atomic(path, lambda staging: save_file(tensors, staging, metadata={**metadata, "format": "pt"}))
