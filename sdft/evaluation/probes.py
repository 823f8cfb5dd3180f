"""The probe set: which images an evaluation generates, fixed for the whole run so steps are comparable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdft.errors import UserError
from sdft.evaluation.prompts import dreambench_prompts


@dataclass(frozen=True)
class Probe:
    """One image to generate: its prompt, its seed, and whether it is a bare class prompt (for PRES)."""

    prompt: str
    seed: int
    is_class: bool = False


def infer_subject(instance_prompt: str) -> tuple[str, str]:
    """``"a photo of sks dog"`` -> ``("sks", "dog")``: the last two words are the identifier and the class noun.

    Args:
        instance_prompt: the data module's instance prompt.
    """
    words = instance_prompt.split()
    if len(words) < 2:
        raise UserError(
            f"cannot read the identifier and class noun from the instance prompt {instance_prompt!r}; "
            "set SubjectEvaluator's identifier and class_noun"
        )
    return words[-2], words[-1]


def subject_prompts(
    identifier: str, class_noun: str, live: bool, prompts: list[str] | str | None, num_prompts: int | None
) -> list[str]:
    """The probe prompts: DreamBench's templates by default, a list, or a file with one prompt per line.

    ``{identifier}`` and ``{class_noun}`` in user prompts are filled in. ``num_prompts`` keeps that many prompts
    spread evenly over the list (None keeps all).

    Args:
        identifier: the rare token naming the subject.
        class_noun: the subject's class (``dog``).
        live: use DreamBench's live-subject prompts (pets) instead of the object prompts.
        prompts: None for DreamBench, a list of prompts, or the path of a text file of prompts.
        num_prompts: how many prompts to keep, evenly spread; None for all.
    """
    if prompts is None:
        chosen = dreambench_prompts(identifier, class_noun, live)
    else:
        lines = read_prompt_file(Path(prompts)) if isinstance(prompts, str) else prompts
        chosen = [line.format(identifier=identifier, class_noun=class_noun) for line in lines if line.strip()]
    if not chosen:
        raise UserError("SubjectEvaluator.prompts holds no prompt; give a list of prompts or a file of one per line")
    if num_prompts is None or num_prompts >= len(chosen):
        return chosen
    return [chosen[i * len(chosen) // num_prompts] for i in range(num_prompts)]


def read_prompt_file(path: Path) -> list[str]:
    """The lines of a prompt file; a missing file is a :class:`UserError` naming it.

    Args:
        path: the text file, one prompt per line.
    """
    if not path.is_file():
        raise UserError(f"SubjectEvaluator.prompts: {path} is not a file; give a list of prompts or a file of them")
    return path.read_text(encoding="utf-8").splitlines()


def build_probes(
    prompts: list[str], images_per_prompt: int, class_prompt: str | None, class_images: int, seed: int
) -> list[Probe]:
    """Every (prompt, seed) pair to generate; the seeds of a prompt are ``seed .. seed + images_per_prompt - 1``.

    Args:
        prompts: the subject prompts.
        images_per_prompt: images per subject prompt.
        class_prompt: the bare class prompt (``a dog``) for PRES, or None for no PRES.
        class_images: images of the class prompt.
        seed: the first seed.
    """
    probes = [Probe(prompt, seed + i) for prompt in prompts for i in range(images_per_prompt)]
    if class_prompt is not None:
        probes += [Probe(class_prompt, seed + i, is_class=True) for i in range(class_images)]
    return probes
