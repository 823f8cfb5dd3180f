"""The README's commands, run as a user types them: through the ``sdft`` console script, in a folder laid out as the
README assumes (``configs/``, ``runs/``, ``path/to/photos``, ``data/dog`` ...).

Each command of the README's ``bash`` blocks has a case below. Where the README's command would take long or needs
a hub model, the case says what stands in, in its ``change``: the quickstart config shortened to 4 steps (a checkpoint,
an evaluation and a preview every 2) with everything else as shipped, the quickstart's run in place of the README's
``runs/sd15-lora`` and ``runs/full`` runs, its base model (``builtin:toyworld``) in place of SD 1.5, two-step sampling.
The commands that need a hub model offline must say so in one line (exit status 2) instead of a traceback. The default
suite checks that every README command has its case; the commands run in the slow suite (a minute or more each on a
busy 2-core machine: each one starts Python and imports torch).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
#: the console script, as ``uv run sdft`` runs it
SDFT = Path(sys.executable).with_name("sdft")
#: fast sampling for the generate commands, which default to the pipeline's 50 steps
FAST = ["--num_inference_steps", "2"]


@dataclass
class Case:
    """How the test runs one README command.

    Attributes:
        replace: (README text, what stands in for it) pairs, applied to the command.
        append: options added after the command.
        status: the exit status it must end with (2: a one-line error, which ``error`` must be in).
        error: a part of the one-line error of a command that must stop (status 2).
        makes: files or folders it must leave, relative to the working folder.
    """

    replace: list[tuple[str, str]] = field(default_factory=list)
    append: list[str] = field(default_factory=list)
    status: int = 0
    error: str = ""
    makes: list[str] = field(default_factory=list)


RUN = "runs/quickstart/version_0"
CASES = {
    "sdft fit --config configs/quickstart.yaml": Case(makes=[f"{RUN}/final", f"{RUN}/checkpoints/step=000002.ckpt"]),
    "sdft report runs/quickstart/version_0": Case(makes=[f"{RUN}/report/report.md", f"{RUN}/report/report.html"]),
    "sdft fit --config configs/sd15/lora.yaml --data.init_args.instance_dir path/to/photos": Case(
        status=2, error="cannot be downloaded"
    ),
    "sdft plan --config configs/quickstart_flux.yaml --budget 10MB": Case(),
    "sdft plan --config configs/flux/lora.yaml --budget 24GB": Case(status=2, error="black-forest-labs/FLUX.1-dev"),
    "sdft fit --config configs/flux/lora.yaml --memory_budget 24GB": Case(
        status=2, error="black-forest-labs/FLUX.1-dev"
    ),
    "sdft fit --config runs/sd15-lora/version_0/config.yaml --ckpt_path "
    "runs/sd15-lora/version_0/checkpoints/step=000500.ckpt": Case(
        replace=[("runs/sd15-lora", "runs/quickstart"), ("step=000500", "step=000002")],
        makes=[f"{RUN}/checkpoints/step=000004.ckpt"],
    ),
    "sdft generate '[\"a photo of sks dog in the snow\"]' --run runs/sd15-lora/version_0 --compare checkpoints "
    "--seeds '[0,1,2]'": Case(replace=[("runs/sd15-lora", "runs/quickstart")], append=FAST, makes=[f"{RUN}/generated"]),
    "sdft generate '[\"a photo of sks dog\"]' --model stable-diffusion-v1-5/stable-diffusion-v1-5 --lora "
    "runs/sd15-lora/version_0/best --compare lora_scale --lora_scales '[0,0.5,1]'": Case(
        replace=[
            ("stable-diffusion-v1-5/stable-diffusion-v1-5", "builtin:toyworld"),
            ("runs/sd15-lora", "runs/quickstart"),
            ("version_0/best", "version_0/final"),
        ],
        append=[*FAST, "--seeds", "[0]", "--output", "generated-lora"],
        makes=["generated-lora/generation.json"],
    ),
    "sdft merge loras path/to/base '[a.safetensors,b.safetensors]' merged.safetensors --weights '[1,0.5]'": Case(
        makes=["merged.safetensors"]
    ),
    "sdft merge loras path/to/base '[a.safetensors,b.safetensors]' merged.safetensors --rank 16 --format kohya": Case(
        makes=["merged.safetensors"]
    ),
    "sdft merge fuse path/to/base lora.safetensors fused.safetensors --scale 0.8 --dtype float16": Case(
        makes=["fused.safetensors"]
    ),
    "sdft merge models modelA modelB merged/ --multiplier 0.3": Case(makes=["merged/model_index.json"]),
    "sdft merge models modelA modelB merged/ --model_c baseB --multiplier 1": Case(makes=["merged/model_index.json"]),
    "sdft extract path/to/base lora.safetensors --tuned runs/full/version_0/final --rank 32": Case(
        replace=[("runs/full/version_0/final", "tuned")], makes=["lora.safetensors"]
    ),
    "sdft extract path/to/base small.safetensors --resize lora.safetensors --rank 8": Case(makes=["small.safetensors"]),
    'sdft prepare photos/ data/sks-dog --instance_prompt "a photo of sks dog" --resolution 512': Case(
        makes=["data/sks-dog/metadata.jsonl"]
    ),
    "sdft convert my-cat.pt": Case(makes=["my-cat.safetensors"]),
}


def readme_commands(text: str) -> list[str]:
    """The ``sdft`` commands of the README's ``bash`` blocks (``uv run`` and comments left out, continued lines
    joined), in order."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:2] == ["uv", "run"]:
                words = words[2:]
            if words[:1] == ["sdft"]:
                commands.append(shlex.join(words))
    return commands


def test_every_readme_command_has_its_case():
    commands = readme_commands((ROOT / "README.md").read_text())
    assert commands and len(commands) == len(set(commands))
    assert sorted(commands) == sorted(shlex.join(shlex.split(command)) for command in CASES)


def shortened_quickstart(folder: Path) -> None:
    """``configs/quickstart.yaml`` at 4 steps, checkpointing, evaluating and previewing every 2, sampling 2 steps."""
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config["trainer"]["max_steps"] = 4
    config["trainer"]["val_check_interval"] = 2
    for callback in config["trainer"]["callbacks"]:
        options = callback.get("init_args", {})
        for key in ("every_n_train_steps", "every_n_steps"):
            if key in options:
                options[key] = 2
        if "num_inference_steps" in options:
            options["num_inference_steps"] = 2
    (folder / "quickstart.yaml").write_text(yaml.safe_dump(config))


def lay_out(folder: Path) -> None:
    """The files the README's commands name, made in ``folder``: configs, photos, base models, LoRA and embedding
    files (each command that writes one of them comes before the commands that read it)."""
    from sdft.assets import resolve
    from sdft.data.toy import write_toy_subject
    from sdft.tiny_models import build_tiny_sd1

    configs = folder / "configs"
    configs.mkdir()
    for entry in (ROOT / "configs").iterdir():
        if entry.name != "quickstart.yaml":
            (configs / entry.name).symlink_to(entry)
    shortened_quickstart(configs)
    for photos in ("path/to/photos", "data/dog", "photos"):
        write_toy_subject(folder / photos, num_images=3, size=512, seed=0)
    (folder / "path/to").mkdir(exist_ok=True)
    (folder / "path/to/base").symlink_to(resolve("builtin:toyworld"))
    for name, seed in (("modelA", 0), ("modelB", 1), ("baseB", 2)):
        build_tiny_sd1(folder / name, seed)
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}, "name": "my-cat"}, folder / "my-cat.pt")


def lora_files(folder: Path) -> None:
    """``a.safetensors``, ``b.safetensors`` and ``lora.safetensors`` from the quickstart run's exports, and a ``tuned``
    copy of the base model whose UNet moved a little (the README's full fine-tune)."""
    final = folder / RUN / "final" / "pytorch_lora_weights.safetensors"
    shutil.copy(final, folder / "a.safetensors")
    shutil.copy(final, folder / "lora.safetensors")
    halved = {key: value * 0.5 if ".lora_B." in key else value for key, value in load_file(final).items()}
    save_file(halved, folder / "b.safetensors")
    shutil.copytree(folder / "path/to/base", folder / "tuned")
    for weights in (folder / "tuned" / "unet").glob("*.safetensors"):
        state = load_file(weights)
        save_file({key: value + 0.01 * torch.randn_like(value) for key, value in state.items()}, weights)


def run_readme_command(command: str, case: Case, folder: Path) -> None:
    for text, stand_in in case.replace:
        assert text in command, f"{text!r} is no longer in {command!r}"
        command = command.replace(text, stand_in)
    words = shlex.split(command)
    done = subprocess.run([str(SDFT), *words[1:], *case.append], cwd=folder, capture_output=True, text=True)
    assert done.returncode == case.status, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if case.status == 2:
        lines = [line for line in done.stderr.splitlines() if line.startswith("sdft: error:")]
        assert len(lines) == 1 and case.error in lines[0] and "Traceback" not in done.stderr, done.stderr[-3000:]
    for made in case.makes:
        assert (folder / made).exists(), f"{command} did not write {made}"


@pytest.mark.slow
def test_the_readme_commands_run_as_typed(tmp_path):
    lay_out(tmp_path)
    commands = readme_commands((ROOT / "README.md").read_text())
    readers = [command for command in commands if re.search(r"\b(a|lora)\.safetensors|--tuned", command)]
    for command in [command for command in commands if command not in readers]:
        run_readme_command(command, CASES[normalised(command)], tmp_path)
    lora_files(tmp_path)
    for command in readers:
        run_readme_command(command, CASES[normalised(command)], tmp_path)


def normalised(command: str) -> str:
    """The key of ``command`` in :data:`CASES`."""
    return next(key for key in CASES if shlex.join(shlex.split(key)) == command)
