"""The loop that trains each stage of the toy world's base model (scripts/toyworld_training.py), and resumes it.

:func:`fit` runs a stage for a step or time budget with AdamW, a linear warm-up then a half cosine, and gradients
clipped at norm 1, and records the loss. Given a :class:`StateFolder`, it saves the stage's whole training state
every ``every`` steps and when the stage ends: the stage's own state (its weights, and a moving average or a head
where it has one), the optimizer's moments, the learning-rate schedule, the generator's state, the step, the losses
so far and the seconds spent. Each file is written whole or not at all, and a later run starts from what it finds:
a stage saved as ended is restored without training, any other continues from its step. The generator comes back
with the rest, so a run stopped and resumed draws the batches and noise of a run that never stopped, and ends with
its weights.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from sdft.files import write_atomic


class Stage(Protocol):
    """One stage of training: its trainable parameters, the loss of a batch it draws, hooks around the steps, and
    its state (what training changes) for saving and restoring."""

    name: str

    def parameters(self) -> list[nn.Parameter]: ...

    def loss(self, generator: torch.Generator) -> torch.Tensor: ...

    def after_step(self) -> None: ...

    def finish(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Budget:
    """How long a stage trains: ``steps`` optimizer steps, or fewer if ``minutes`` run out first.

    Args:
        steps: the most optimizer steps.
        minutes: the most wall-clock minutes; None for no limit (a run stopped by time is not reproducible).
    """

    steps: int
    minutes: float | None = None

    def allows(self, step: int, seconds: float) -> bool:
        return step < self.steps and (self.minutes is None or seconds < 60 * self.minutes)


@dataclass
class Progress:
    """Where a stage's training stands.

    Args:
        step: optimizer steps done.
        seconds: the seconds spent on them, over every run.
        losses: the loss records so far, ``[step, mean loss, seconds]`` each.
        window: the losses of the steps since the last record.
        ended: whether the stage's budget is spent (its state is final but for :meth:`Stage.finish`).
    """

    step: int = 0
    seconds: float = 0.0
    losses: list[list[float]] = field(default_factory=list)
    window: list[float] = field(default_factory=list)
    ended: bool = False


class StateFolder:
    """Where stages save their training state, ``<folder>/<stage name>.pt``, and how often.

    Args:
        folder: the folder (created when the first state is saved).
        every: save every this many optimizer steps.
    """

    def __init__(self, folder: Path, every: int) -> None:
        if every < 1:
            raise ValueError(f"save_every must be at least 1, got {every}")
        self.folder, self.every = Path(folder), every

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pt"

    def load(self, name: str) -> dict[str, Any] | None:
        """The newest state stage ``name`` saved, on the CPU, or None."""
        path = self.path(name)
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def save(self, name: str, state: dict[str, Any]) -> None:
        """Replace stage ``name``'s state by ``state``, whole or not at all."""
        write_atomic(self.path(name), lambda file: torch.save(state, file))


def rate_factor(step: int, warmup: int, steps: int, final: float = 0.1) -> float:
    """The learning rate of optimizer step ``step`` (from 0) as a share of the peak: a linear warm-up over
    ``warmup`` steps, then a half cosine down to ``final`` at step ``steps`` (Loshchilov & Hutter 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def fit(
    stage: Stage,
    budget: Budget,
    learning_rate: float,
    generator: torch.Generator,
    warmup: int = 100,
    every: int = 50,
    states: StateFolder | None = None,
) -> dict:
    """Train ``stage`` with AdamW (no weight decay), the learning rate of :func:`rate_factor` and gradients clipped
    at norm 1, from the state ``states`` holds for it if any; return its record: steps, seconds, learning rate and,
    every ``every`` steps, ``[step, mean loss of those steps, seconds since the start]`` (the fastest stretches tell a
    busy machine's step time from a quiet one's).

    Args:
        stage: the stage to train.
        budget: how long it trains.
        learning_rate: the peak learning rate.
        generator: draws every batch and noise (its state is saved and restored with the stage's).
        warmup: warm-up steps.
        every: steps per loss record.
        states: where the stage's state is saved and resumed from; None saves nothing.
    """
    parameters = stage.parameters()
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: rate_factor(step, warmup, budget.steps))
    training = (optimizer, schedule, generator)
    done = restore(stage, training, states)
    start = time.perf_counter() - done.seconds
    while not done.ended and budget.allows(done.step, time.perf_counter() - start):
        done.window.append(take_step(stage, parameters, optimizer, schedule, generator))
        done.step += 1
        done.seconds = time.perf_counter() - start
        if done.step % every == 0 or not budget.allows(done.step, done.seconds):
            done.losses.append(progress(stage.name, done.step, done.window, done.seconds, done.losses))
            done.window = []
        if states is not None and done.step % states.every == 0 and budget.allows(done.step, done.seconds):
            states.save(stage.name, training_state(stage, training, done))
    if states is not None and not done.ended:
        done.ended = True
        states.save(stage.name, training_state(stage, training, done))
    stage.finish()
    return {"stage": stage.name, "steps": done.step, "seconds": round(done.seconds, 1),
            "learning_rate": learning_rate, "losses": done.losses}  # fmt: skip


def take_step(
    stage: Stage,
    parameters: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> float:
    """One optimizer step on a batch the stage draws; return its loss."""
    loss = stage.loss(generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    schedule.step()
    stage.after_step()
    return loss.item()


def training_state(stage: Stage, training: tuple, done: Progress) -> dict[str, Any]:
    """Everything a stage's training resumes from (see the module docstring)."""
    optimizer, schedule, generator = training
    return {
        "stage": stage.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "generator": generator.get_state(),
        "progress": asdict(done),
    }


def restore(stage: Stage, training: tuple, states: StateFolder | None) -> Progress:
    """Load the stage's saved state, if ``states`` has one, into the stage, the optimizer, the schedule and the
    generator; return where it stands (a fresh start without one)."""
    state = None if states is None else states.load(stage.name)
    if state is None:
        return Progress()
    optimizer, schedule, generator = training
    stage.load_state_dict(state["stage"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generator"])
    done = Progress(**state["progress"])
    print(f"{stage.name}: resumed at step {done.step}", file=sys.stderr, flush=True)
    return done


def progress(name: str, step: int, window: list[float], seconds: float, earlier: list[list[float]]) -> list[float]:
    """The loss record ``[step, mean loss, seconds]`` of the steps in ``window``, also printed with their pace."""
    last_step, last_seconds = earlier[-1][0::2] if earlier else (0, 0.0)
    pace = (seconds - last_seconds) / (step - last_step)
    print(f"{name}: step {step}, loss {np.mean(window):.4f}, {pace:.3f} s/step", file=sys.stderr, flush=True)
    return [step, round(float(np.mean(window)), 5), round(seconds, 1)]
