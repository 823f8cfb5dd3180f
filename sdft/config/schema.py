"""Read ``schema.json``, the options of sdft's LightningCLI written by :mod:`sdft.config.extraction`.

An option is ``{"name": "trainer.max_steps", "type": ..., "default": ..., "help": ...}`` (no ``default`` when it is
required, ``unprintable`` when its default does not print). A type is a name (``int``, ``float``, ``bool``, ``str``,
``null``, ``path``, ``any``) or a one-key object: ``enum`` (the values), ``union``, ``list`` and ``dict`` (of a type),
``tuple`` (of types), ``class`` (a reference ``{"base": ..., "skip": n}`` to a base class) and ``callable``
(references to the classes a call returns, without its first ``skip`` arguments). ``bases`` lists each base's
checked subclasses, whose options ``classes`` holds (unless jsonargparse cannot describe them); a config may name
others, which the real parser checks.
"""

from __future__ import annotations

import ast
import hashlib
import json
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

SCHEMA_FILE = Path(__file__).with_name("schema.json")
#: the distributions whose versions the options come from
PACKAGES = ("jsonargparse", "lightning", "torch", "sdft")


class Schema:
    """The options of each command and of each checked class."""

    def __init__(self, raw: dict) -> None:
        self.raw = raw

    def command_options(self, command: str) -> dict[str, dict] | None:
        found = self.raw["commands"].get(command)
        return None if found is None else {option["name"]: option for option in found["options"]}

    def class_options(self, key: str) -> dict[str, dict] | None:
        found = self.raw["classes"].get(key)
        return None if found is None else {option["name"]: option for option in found["options"]}

    def find_class(self, name: str, references: list[dict]) -> tuple[str, str] | None:
        """The path and class key of a class path or name among the checked subclasses of ``references``."""
        for reference in references:
            for path in self.raw["bases"].get(reference["base"], ()):
                key = class_key(path, reference.get("skip", 0))
                if name in (path, path.rsplit(".", 1)[-1]) and key in self.raw["classes"]:
                    return path, key
        return None

    def classes_of(self, references: list[dict]) -> list[str]:
        return [path for reference in references for path in self.raw["bases"].get(reference["base"], ())]

    def sdft_class_names(self) -> set[str]:
        return {path.rsplit(".", 1)[-1] for paths in self.raw["bases"].values() for path in paths if is_sdft(path)}

    def names(self, option: str) -> list[str] | None:
        """The names Lightning accepts for ``trainer.strategy`` or ``trainer.accelerator``."""
        return self.raw["names"].get(option)


def class_key(path: str, skip: int) -> str:
    """The key of a class in ``classes``: its path, and ``:n`` when a call gives its first n arguments."""
    return f"{path}:{skip}" if skip else path


def is_sdft(path: str) -> bool:
    return path.startswith("sdft.")


@cache
def load_schema() -> Schema | None:
    """The schema, or None when it is missing, was extracted with other versions of the packages it reads, or
    from other sources of sdft's classes than those installed (then only the real parser can tell)."""
    try:
        raw = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if raw.get("versions") != installed_versions() or not sources_match(raw.get("sources", {})):
        return None
    return Schema(raw)


def sources_match(sources: dict[str, str]) -> bool:
    """Whether sdft's files that the options come from are those they were extracted from."""
    package = SCHEMA_FILE.parent.parent
    try:
        return all(file_digest(package / name) == digest for name, digest in sources.items())
    except OSError:
        return False


def file_digest(file: Path) -> str:
    """A digest of what a module tells the parser: the module without the bodies of its functions (their signatures,
    defaults, decorators and docstrings kept), so that editing what a method does keeps the schema current and only
    a change to an option, its default, its type or its help makes it stale."""
    tree = SignaturesOnly().visit(ast.parse(file.read_bytes()))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


class SignaturesOnly(ast.NodeTransformer):
    """Replaces each function's body by its docstring."""

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        docstring = ast.get_docstring(node, clean=False)
        node.body = [ast.Expr(ast.Constant(docstring))] if docstring is not None else [ast.Pass()]
        return node

    visit_AsyncFunctionDef = visit_FunctionDef


def relative_name(file: Path) -> str:
    """A file of sdft by its path inside the package (``methods/lora.py``)."""
    return file.relative_to(SCHEMA_FILE.parent.parent).as_posix()


def installed_versions() -> dict[str, str | None]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found
