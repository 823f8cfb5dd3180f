"""``sdft convert``: legacy pickles to ``.safetensors``, loaded weights-only, so a file that would run code is refused
and nothing in it runs; every kind of file round-trips tensor for tensor."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import torch
from jsonargparse import auto_cli
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from sdft.errors import UserError
from sdft.interop.legacy import convert
from sdft.methods.tokens import A1111_KEY


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    return load_file(path), metadata


def assert_same_tensors(written: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(written) == sorted(expected)
    for key, tensor in expected.items():
        assert written[key].dtype == tensor.dtype, key
        assert torch.equal(written[key], tensor), key


def kohya_lora() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 16, generator=generator), torch.randn(16, 4, generator=generator)
    module = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    return {
        f"{module}.lora_down.weight": down.half(),
        f"{module}.lora_up.weight": up.half(),
        f"{module}.alpha": torch.tensor(2.0),
    }


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_lora_round_trips_in_both_torch_formats(tmp_path: Path, zip_format: bool) -> None:
    lora = kohya_lora()
    source = tmp_path / "my_lora.pt"
    torch.save(lora, source, _use_new_zipfile_serialization=zip_format)

    conversion = convert(source)

    assert conversion.output == tmp_path / "my_lora.safetensors"
    assert (conversion.kind, len(conversion.tensors), conversion.num_bytes) == ("lora", 3, 64 * 2 * 2 + 4)
    tensors, metadata = read_safetensors(conversion.output)
    assert_same_tensors(tensors, lora)
    assert metadata == {"format": "pt"}


def test_shared_and_non_contiguous_tensors_are_written_as_copies(tmp_path: Path) -> None:
    base = torch.arange(24.0).reshape(4, 6)
    state = {"a.lora_A.weight": base, "b.lora_A.weight": base.t(), "c.lora_B.weight": base[:2], "d.weight": base}
    torch.save(state, tmp_path / "shared.bin")

    conversion = convert(tmp_path / "shared.bin", tmp_path / "out.safetensors")

    tensors, _ = read_safetensors(tmp_path / "out.safetensors")
    assert_same_tensors(tensors, {key: value.contiguous() for key, value in state.items()})
    assert conversion.kind == "lora"


def test_an_a1111_embedding_becomes_emb_params_with_its_name_in_the_header(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    vectors = nn.Parameter(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)))
    embedding = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors},
        "name": "cat-toy",
        "step": 3000,
        "sd_checkpoint": "a9263745",
        "sd_checkpoint_name": "v1-5-pruned",
    }
    torch.save(embedding, tmp_path / "cat-toy.pt")

    conversion = convert(tmp_path / "cat-toy.pt")

    tensors, metadata = read_safetensors(tmp_path / "cat-toy.safetensors")
    assert_same_tensors(tensors, {A1111_KEY: vectors.detach()})  # the layout sdft's own embedding export writes
    assert metadata == {
        "name": "cat-toy",
        "step": "3000",
        "sd_checkpoint": "a9263745",
        "sd_checkpoint_name": "v1-5-pruned",
        "format": "pt",
    }
    assert conversion.kind == "embedding"
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path / 'cat-toy.pt'}: embedding, 1 tensor, 64 bytes -> {tmp_path / 'cat-toy.safetensors'}",
        "header: name=cat-toy, step=3000, sd_checkpoint=a9263745, sd_checkpoint_name=v1-5-pruned",
        "dropped: string_to_token (the trainer's token ids; A1111 assigns its own)",
    ]


def test_a_diffusers_embedding_keeps_its_token(tmp_path: Path) -> None:
    learned = {"<cat-toy>": torch.randn(768, generator=torch.Generator().manual_seed(2))}
    torch.save(learned, tmp_path / "learned_embeds.bin")

    conversion = convert(tmp_path / "learned_embeds.bin", tmp_path)  # an existing folder: <stem>.safetensors in it

    assert conversion.kind == "embedding"
    assert_same_tensors(load_file(tmp_path / "learned_embeds.safetensors"), learned)


def test_a_checkpoint_keeps_its_state_dict_and_step_and_drops_the_optimizer(tmp_path: Path) -> None:
    weights = {
        "model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3),
        "model.diffusion_model.out.2.bias": torch.zeros(4),
    }
    saved = {
        "state_dict": weights,
        "global_step": 470000,
        "epoch": 6,
        "pytorch-lightning_version": "1.4.2",
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(4)}}, "param_groups": [{"lr": 1e-4}]}],
        "callbacks": None,
    }
    torch.save(saved, tmp_path / "model.ckpt", _use_new_zipfile_serialization=False)

    conversion = convert(tmp_path / "model.ckpt")

    tensors, metadata = read_safetensors(tmp_path / "model.safetensors")
    assert_same_tensors(tensors, weights)
    assert metadata == {"global_step": "470000", "epoch": "6", "pytorch-lightning_version": "1.4.2", "format": "pt"}
    assert (conversion.kind, conversion.dropped) == ("checkpoint", ["optimizer_states (1 tensor, not model weights)"])


def test_nested_dicts_flatten_to_dotted_keys_and_values_go_to_the_header(tmp_path: Path) -> None:
    down, up = torch.randn(2, 4), torch.randn(4, 2)
    nested = {
        "unet": {"mid_block.attn.to_q": {"lora_A.weight": down, "lora_B.weight": up}},
        "rank": 2,
        "alphas": [1.0, 2.0],
        "trained": True,
        "dtype": torch.float16,
    }
    torch.save(nested, tmp_path / "nested.pkl")  # a .pkl written by torch.save

    conversion = convert(tmp_path / "nested.pkl")

    tensors, metadata = read_safetensors(tmp_path / "nested.safetensors")
    assert_same_tensors(
        tensors, {"unet.mid_block.attn.to_q.lora_A.weight": down, "unet.mid_block.attn.to_q.lora_B.weight": up}
    )
    assert metadata == {"rank": "2", "alphas": "[1.0, 2.0]", "trained": "True", "format": "pt"}
    assert conversion.dropped == ["1 entries that are neither tensors, numbers nor strings: dtype (dtype)"]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a malicious file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("writer", ["torch-zip", "torch-legacy", "pickle"])
def test_a_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    contents = {"lora_unet_x.lora_down.weight": torch.ones(2, 2), "payload": Payload(marker)}
    source = tmp_path / "innocent.pkl"
    if writer == "pickle":
        source.write_bytes(pickle.dumps(contents))
    else:
        torch.save(contents, source, _use_new_zipfile_serialization=writer == "torch-zip")

    with pytest.raises(UserError) as refused:
        convert(source)

    assert not marker.exists()
    message = str(refused.value)
    assert message.startswith(f"{source} ") and "\n" not in message
    if writer == "pickle":
        assert "is a plain Python pickle (pickle.dump), not a torch.save file" in message
    else:
        assert re.search(r"was not loaded: loading it would run code named in the file \([\w.]*open\)", message)
    assert not (tmp_path / "innocent.safetensors").exists()


def test_a_custom_class_is_refused_by_name(tmp_path: Path) -> None:
    torch.save({"weight": torch.ones(1), "config": Path("settings.yaml")}, tmp_path / "custom.pt")
    with pytest.raises(UserError, match=r"would run code named in the file \(pathlib\.[\w.]*Path\)"):
        convert(tmp_path / "custom.pt")


def test_unknown_and_damaged_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "notes.bin").write_text("not weights\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"weight": torch.ones(64, 64)}, tmp_path / "whole.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:2000])
    (tmp_path / "tensors.pkl").write_bytes(pickle.dumps({"weight": torch.ones(2)}))
    torch.save([torch.ones(2)], tmp_path / "list.pt")

    expected = {
        "notes.bin": r"notes\.bin is not a PyTorch file \(torch\.save writes a zip archive or a pickle\)",
        "empty.pt": r"empty\.pt is empty \(0 bytes\); download or copy it again",
        "truncated.pt": r"truncated\.pt could not be read as a PyTorch file \(.+\); it may be truncated: copy it",
        "tensors.pkl": r"tensors\.pkl is a plain Python pickle \(pickle\.dump\), not a torch\.save file",
        "list.pt": r"list\.pt holds a list, not a dict of tensors; nothing to convert",
    }
    for name, message in expected.items():
        with pytest.raises(UserError, match=message):
            convert(tmp_path / name)
    assert not list(tmp_path.glob("*.safetensors"))
    assert not list(tmp_path.glob(".*"))  # no staging file left


def test_an_existing_output_is_replaced_only_when_asked(tmp_path: Path) -> None:
    lora = kohya_lora()
    torch.save(lora, tmp_path / "lora.bin")
    (tmp_path / "lora.safetensors").write_bytes(b"the user's file")

    with pytest.raises(UserError, match=r"lora\.safetensors exists; choose another --output, or pass --overwrite true"):
        convert(tmp_path / "lora.bin")
    assert (tmp_path / "lora.safetensors").read_bytes() == b"the user's file"

    auto_cli(convert, args=[str(tmp_path / "lora.bin"), "--overwrite", "true"])  # as the command line passes it
    assert_same_tensors(load_file(tmp_path / "lora.safetensors"), lora)

    with pytest.raises(UserError, match=r"--output .*lora\.pt must end in \.safetensors"):
        convert(tmp_path / "lora.bin", tmp_path / "lora.pt")
    with pytest.raises(UserError, match=r"lora\.safetensors is already a \.safetensors file"):
        convert(tmp_path / "lora.safetensors", tmp_path / "again.safetensors")
