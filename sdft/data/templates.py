"""Prompt templates for textual inversion (Gal et al. 2022, arXiv 2208.01618): the subject phrase fills ``{}``."""

from __future__ import annotations

from sdft.errors import UserError

OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)

STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
)

NAMED = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


def prompt_templates(templates: str | list[str], key: str) -> tuple[str, ...]:
    """``"object"``, ``"style"`` or a list of templates with one ``{}`` each -> the checked templates.

    Args:
        templates: a named set or the templates themselves.
        key: the config key that named them, for messages.
    """
    if isinstance(templates, str):
        if templates not in NAMED:
            raise UserError(f"{key} is {templates!r}; use 'object', 'style' or a list of templates with '{{}}'")
        return NAMED[templates]
    if not templates:
        raise UserError(f"{key} is an empty list; give templates with '{{}}' or use 'object' / 'style'")
    for template in templates:
        if template.count("{}") != 1:
            raise UserError(f"{key}: template {template!r} must hold exactly one '{{}}' for the subject phrase")
    return tuple(templates)
