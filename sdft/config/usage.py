"""``sdft <command> --help`` from the schema: every option with its help, type and default, grouped by section."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sdft.config.merging import class_references
from sdft.config.schema import Schema
from sdft.config.values import describe


def usage_text(schema: Schema, command: str) -> str:
    """The help of a LightningCLI command, as argparse lays it out."""
    parser = argparse.ArgumentParser(
        prog=f"sdft {command}",
        description=schema.raw["commands"][command]["description"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", metavar="CONFIG", help="a YAML config file; several are merged in order")
    parser.add_argument(
        "--print_config", action="store_true", help="print the configuration after applying all other arguments"
    )
    sections: dict[str, Any] = {}
    for option in schema.raw["commands"][command]["options"]:
        section = option["name"].split(".")[0] if "." in option["name"] else None
        if section and section not in sections:
            sections[section] = parser.add_argument_group(f"{section} options")
        group = sections[section] if section else parser
        group.add_argument(f"--{option['name']}", metavar=metavar(option), help=help_line(schema, option))
    return parser.format_help()


def metavar(option: dict) -> str:
    """``CLASS_PATH_OR_NAME | .INIT_ARG_NAME VALUE`` for an option that takes only a class, else its name."""
    single, _ = class_references(option["type"])
    members = option["type"].get("union", [option["type"]]) if isinstance(option["type"], dict) else [option["type"]]
    if single and all(member == "null" or class_references(member)[0] for member in members):
        return "CLASS_PATH_OR_NAME | .INIT_ARG_NAME VALUE"
    return option["name"].split(".")[-1].upper()


def help_line(schema: Schema, option: dict) -> str:
    """An option's help, then its type, default and the classes sdft knows for it."""
    default = json.dumps(option["default"]) if "default" in option else "required"
    words = [option.get("help", "").strip(), f"({describe(option['type'])}; default: {default})"]
    single, listed = class_references(option["type"])
    known = schema.classes_of(single + listed)
    if known:
        words.append("Known classes: " + ", ".join(dict.fromkeys(known)) + ".")
        words.append(f"--{option['name']}.help CLASS lists a class's options.")
    return " ".join(word for word in words if word).replace("%", "%%")
