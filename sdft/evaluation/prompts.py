"""The 25 DreamBench evaluation prompts (DreamBooth, arXiv 2208.12242, supplementary material)."""

from __future__ import annotations

SHARED_CONTEXTS = (
    "in the jungle",
    "in the snow",
    "on the beach",
    "on a cobblestone street",
    "on top of pink fabric",
    "on top of a wooden floor",
    "with a city in the background",
    "with a mountain in the background",
    "with a blue house in the background",
    "on top of a purple rug in a forest",
)
OBJECT_CONTEXTS = (
    "with a wheat field in the background",
    "with a tree and autumn leaves in the background",
    "with the Eiffel Tower in the background",
    "floating on top of water",
    "floating in an ocean of milk",
    "on top of green grass with sunflowers around it",
    "on top of a mirror",
    "on top of the sidewalk in a crowded street",
    "on top of a dirt road",
    "on top of a white rug",
)
LIVE_CONTEXTS = (
    "wearing a red hat",
    "wearing a santa hat",
    "wearing a rainbow scarf",
    "wearing a black top hat and a monocle",
    "in a chef outfit",
    "in a firefighter outfit",
    "in a police outfit",
    "wearing pink glasses",
    "wearing a yellow shirt",
    "in a purple wizard outfit",
)
ADJECTIVES = ("red", "purple", "shiny", "wet", "cube shaped")


def dreambench_prompts(identifier: str, class_noun: str, live: bool) -> list[str]:
    """The 25 DreamBench prompts for one subject, in the paper's order.

    Prompts 1-10 are shared, 11-20 depend on whether the subject is alive (dogs, cats) or an object,
    21-25 put an adjective before the identifier (``a red sks dog``).

    Args:
        identifier: the rare token standing for the subject (e.g. ``sks``).
        class_noun: the subject's class (e.g. ``dog``).
        live: True for live subjects (accessory prompts), False for objects (scene prompts).
    """
    subject = f"{identifier} {class_noun}"
    contexts = SHARED_CONTEXTS + (LIVE_CONTEXTS if live else OBJECT_CONTEXTS)
    return [f"a {subject} {context}" for context in contexts] + [f"a {adjective} {subject}" for adjective in ADJECTIVES]
