"""A list option of a tool given as users type it: one plain value, or the option repeated, reads as the one list
the parser takes."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import auto_parser

from sdft.cli import TOOLS
from sdft.tools.arguments import listed_options
from sdft.tools.generate import generate


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--lora", "runs/x/best"], ["--lora", '["runs/x/best"]']),
        (["--lora=runs/x/best"], ["--lora", '["runs/x/best"]']),
        (["--lora", "a", "--seeds", "3", "--lora", "b"], ["--lora", '["a", "b"]', "--seeds", "[3]"]),
        (["--lora_scales", "0.5", "--lora_scales", "1"], ["--lora_scales", "[0.5, 1]"]),
        (["--lora_scales", "[0,0.5,1]", "--model", "m"], ["--lora_scales", "[0,0.5,1]", "--model", "m"]),
        (["--embedding_tokens", "123"], ["--embedding_tokens", '["123"]']),  # a word stays a word
        (["--model", "m", "--resolution", "64"], ["--model", "m", "--resolution", "64"]),
    ],
    ids=["one-path", "equals", "repeated", "numbers", "already-a-list", "strings", "not-lists"],
)
def test_a_list_option_given_as_plain_values_becomes_one_list(args, expected):
    assert listed_options(generate, ['["a photo"]', *args]) == ['["a photo"]', *expected]


def test_the_parser_reads_the_listed_options_as_the_tool_takes_them():
    line = ['["a photo"]', "--model", "m", "--lora", "runs/x/best", "--seeds", "3", "--lora_scales", "0.5"]
    config = auto_parser(generate).parse_args(listed_options(generate, line))
    assert config.lora == [Path("runs/x/best")] and config.seeds == (3,) and config.lora_scales == [0.5]


def test_a_subcommand_of_a_tool_class_has_its_own_list_options():
    args = ["loras", "base", "[a,b]", "out.safetensors", "--weights", "1", "--weights", "0.5"]
    assert listed_options(TOOLS["merge"], args) == [*args[:4], "--weights", "[1, 0.5]"]
    assert listed_options(TOOLS["merge"], ["--help"]) == ["--help"]
