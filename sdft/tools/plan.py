"""``sdft plan``: a fit's memory per device, planned from its config before any weight loads (:mod:`sdft.memory`)."""

from __future__ import annotations

from sdft.errors import UserError

#: the option ``sdft plan`` reads itself; every other argument is the fit's (``--config``, ``--model.*`` ...)
BUDGET = "--budget"

USAGE = """usage: sdft plan --config CONFIG [--budget SIZE] [fit options]

Plan the memory a fit will take on each device (frozen weights by dtype, trained parameters, gradients, optimizer
state, encoding cache, activations) from its config alone, without loading any weights; with --budget (e.g. 24GB),
name the switches that bring it under."""


def split_budget(argv: list[str]) -> tuple[str | None, list[str]]:
    """``--budget X`` or ``--budget=X`` taken out of the arguments."""
    rest, budget, items = [], None, iter(argv)
    for item in items:
        if item == BUDGET:
            budget = next(items, None)
            if budget is None:
                raise UserError("--budget needs a size, e.g. --budget 24GB")
        elif item.startswith(BUDGET + "="):
            budget = item.split("=", 1)[1]
        else:
            rest.append(item)
    return budget, rest


def plan_command(argv: list[str]) -> None:
    """Run ``sdft plan`` on its arguments (without ``plan``)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    from sdft.lightning_cli import configured_fit
    from sdft.memory import parse_size, plan_fit, size_text

    text, rest = split_budget(argv)
    budget = None if text is None else parse_size(text, "--budget")
    trainer, model, datamodule = configured_fit(rest)
    plan, line = plan_fit(trainer, model, datamodule, budget)
    print(plan.table())
    if budget is not None:
        print(line or f"fits the budget of {size_text(budget)}")
