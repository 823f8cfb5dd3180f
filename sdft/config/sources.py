"""What a command line gives: its config files, read as the parser reads them but with the line of every key, and its
``--key value`` options, in the order given."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdft.errors import UserError


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML as jsonargparse loads it: no timestamps, and floats written without a dot (``1e-4``)."""


DROPPED_TAGS = ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:float")
Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in DROPPED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


@dataclass
class Source:
    """One config file: its values and the line each key was written on."""

    name: str
    values: Any
    lines: dict[tuple, int] = field(default_factory=dict)

    def place(self, path: tuple) -> str:
        """Where the key at ``path`` was written: ``file:line``, or the file's name."""
        line = self.lines.get(path)
        return self.name if line is None else f"{self.name}:{line}"


@dataclass
class CommandLine:
    """A LightningCLI command line, split into what the parser reads in order."""

    command: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # ("config", file name) or (key, value)
    help: bool = False
    print_config: bool = False


def read_command_line(argv: list[str]) -> CommandLine | None:
    """The steps of ``sdft <command> ...``; None when it uses what only the real parser reads (appending with
    ``--key+``, a class's own help, ``--print_config`` flags, positional arguments)."""
    line = CommandLine(argv[0])
    arguments = list(argv[1:])
    while arguments:
        argument = arguments.pop(0)
        if argument in ("-h", "--help"):
            line.help = True
        elif argument == "--print_config":
            line.print_config = True
        elif not argument.startswith("--") and argument != "-c":
            return None
        else:
            key, _, value = argument.lstrip("-").partition("=")
            if "=" not in argument:
                if not arguments or arguments[0].startswith("--"):
                    return None
                value = arguments.pop(0)
            if key.endswith(("+", ".help")) or key == "print_config":
                return None
            line.steps.append(("config" if key == "c" else key, value))
    return line


def read_config(name: str) -> Source:
    """A config file's values and the line of each key; a missing or unreadable file, or YAML that does not parse,
    is a one-line :class:`UserError` naming the file (and the line and column)."""
    path = Path(name)
    if not path.exists():
        raise UserError(f"--config {name}: no such file")
    if path.is_dir():
        raise UserError(f"--config {name}: is a folder; give a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
        loader = Loader(text)
        try:
            node = loader.get_single_node()
            values = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        raise UserError(yaml_mistake(name, error)) from error
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UserError(f"--config {name}: cannot be read ({error})") from error
    if values is not None and not isinstance(values, dict):
        raise UserError(
            f"{name}: a config is a mapping of keys (trainer:, model:, data:), not a {type(values).__name__}"
        )
    source = Source(name, values or {})
    record_lines(node, (), source.lines)
    return source


def yaml_mistake(name: str, error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
    return f"{where}: not valid YAML: {error.problem or error.context}"


def record_lines(node: yaml.Node | None, path: tuple, lines: dict[tuple, int]) -> None:
    """Record the (1-based) line of every mapping key and list item under ``node``."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[(*path, key.value)] = key.start_mark.line + 1
            record_lines(value, (*path, key.value), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            record_lines(item, (*path, index), lines)
