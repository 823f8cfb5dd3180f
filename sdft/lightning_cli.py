"""sdft's LightningCLI: forced callbacks and checkpoint writer, checks before any model loads, resumes that continue
their run folder, and exit statuses that tell a scheduler what happened."""

from __future__ import annotations

import logging
import re
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from diffusers.utils import logging as diffusers_logging
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, StrategyRegistry
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from transformers.utils import logging as transformers_logging

from sdft.callbacks import (
    ExponentialMovingAverage,
    FinalExport,
    InterruptionCheckpoint,
    StepProgressBar,
    SubjectEvaluator,
)
from sdft.checkpointing import AtomicCheckpointIO, check_checkpoint_file
from sdft.data.buckets import BucketedData
from sdft.data.sampling import check_max_steps
from sdft.errors import UserError
from sdft.methods import DiffusionFineTuner
from sdft.methods.run_notes import SizedData
from sdft.sharding import ShardedStrategy
from sdft.storage import check_run_storage

#: strategies whose ranks each hold a shard of the model
SHARDED_STRATEGIES = (FSDPStrategy, ModelParallelStrategy, DeepSpeedStrategy)
#: trainer precisions that compute in float16, which the CPU does not run
FLOAT16_PRECISIONS = ("16", "16-mixed", "16-true")

#: expected warnings that say nothing to an sdft user
QUIET = (
    # the frozen base model stays in eval mode on purpose; only the trained modules are in train mode
    (r"Found \d+ module\(s\) in eval mode", PossibleUserWarning),
    # raised inside Lightning about torch's own pytree API
    (r".*isinstance\(treespec, LeafSpec\)", Warning),
    # sdft checks the data and the steps itself; one worker per core is rarely right for a few photos
    (r"The '\w+_dataloader' does not have many workers", PossibleUserWarning),
    # the console script hands LightningCLI its own arguments
    (r"LightningCLI's args parameter is intended", UserWarning),
)
#: Lightning's advertisements, dropped from its log
ADVERTISEMENTS = ("💡 Tip:",)


class DropAdvertisements(logging.Filter):
    """A logging filter that drops Lightning's tips about other products."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTISEMENTS)


@runtime_checkable
class CheckedData(Protocol):
    """A data module that can check its files and settings without loading a model."""

    def check(self) -> None: ...


class SdftCLI(LightningCLI):
    """LightningCLI with sdft's forced callbacks (final export, checkpoint on interruption), atomic checkpoint
    files, checks before any model loads, and an exit status of 128 + the signal's number (130 for Ctrl-C, 143
    for SIGTERM) when a fit is interrupted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except (SystemExit, KeyboardInterrupt):
            code = interruption_exit_code(getattr(self, "trainer", None))
            if code:
                raise SystemExit(code) from None
            raise

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(FinalExport, "final_export")
        parser.add_lightning_class_args(InterruptionCheckpoint, "interruption")
        parser.add_argument(
            "--memory_budget",
            type=str | None,
            default=None,
            help="stop before loading when the planned memory per device exceeds this size (e.g. 24GB), naming the "
            "switches that fit it (sdft plan prints the whole plan)",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        if self.config.get("subcommand"):  # LightningCLI reads the checkpoint itself, before any of sdft's hooks
            check_checkpoint_file(self.config[self.config["subcommand"]].get("ckpt_path"))

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":
            check_trainer_options(self.config["fit"]["trainer"])
            resolve_last_checkpoint(self.config["fit"])
            continue_run_folder(self.config["fit"], self.save_config_kwargs)

    def instantiate_trainer(self, **kwargs: Any):
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as error:  # Lightning refusing a trainer option
            if isinstance(error, UserError):
                raise
            raise UserError(f"trainer: {str(error).strip().splitlines()[0]}") from error
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep a writer the user chose
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        bar = trainer.progress_bar_callback
        if type(bar) in (TQDMProgressBar, RichProgressBar):  # Lightning's defaults: count steps, not epochs
            callbacks = trainer.callbacks
            callbacks[callbacks.index(bar)] = StepProgressBar()
        return trainer

    def before_fit(self) -> None:
        check_before_loading(self.trainer, self.model, self.datamodule)
        check_run_storage(self.trainer, self.model)
        check_memory_budget(self.config["fit"].get("memory_budget"), self.trainer, self.model, self.datamodule)


def check_memory_budget(budget: str | None, trainer: Trainer, model: LightningModule, datamodule) -> None:
    """With ``--memory_budget``, refuse a fit whose plan (:mod:`sdft.memory`) exceeds it, before anything loads,
    in one line naming the switches to add."""
    if budget is None or not isinstance(model, DiffusionFineTuner) or not isinstance(datamodule, SizedData):
        return
    from sdft.memory import parse_size, plan_fit, size_text

    planned, line = plan_fit(trainer, model, datamodule, parse_size(budget, "--memory_budget"))
    if line is not None:
        raise UserError(f"--memory_budget: {line}")
    rank_zero_info(f"memory plan: {size_text(planned.peak)} per device, within --memory_budget {budget}")


def configured_fit(argv: list[str]) -> tuple[Trainer, LightningModule, LightningDataModule]:
    """The trainer, fine-tuner and data module of a fit's arguments (``--config`` ...), instantiated and checked
    as ``sdft fit`` checks them before loading, nothing loaded."""
    cli = sdft_cli(argv, run=False)
    check_before_loading(cli.trainer, cli.model, cli.datamodule)
    if not isinstance(cli.model, DiffusionFineTuner) or not isinstance(cli.datamodule, SizedData):
        raise UserError("sdft plan needs one of sdft's fine-tuners (model) and data modules (data)")
    return cli.trainer, cli.model, cli.datamodule


def check_trainer_options(options: Any) -> None:
    """The trainer options that Lightning would refuse with a traceback, or silently change, when it builds the
    trainer: the number of steps, float16 on the CPU, and sharding strategies by name.

    Args:
        options: the ``trainer`` section of the parsed config.
    """
    check_max_steps(options.get("max_steps", -1))
    precision = str(options.get("precision"))
    if precision in FLOAT16_PRECISIONS and runs_on_cpu(options.get("accelerator")):
        raise UserError(
            f"trainer.precision: {precision} computes in float16, which the CPU does not run; use bf16-mixed or 32 "
            "on a CPU, or train on a GPU (trainer.accelerator: gpu)"
        )
    strategy = options.get("strategy")
    if isinstance(strategy, str) and strategy in StrategyRegistry:
        strategy_class = StrategyRegistry[strategy]["strategy"]
        if issubclass(strategy_class, SHARDED_STRATEGIES):
            raise UserError(unsupported_strategy(strategy_class.__name__))


def runs_on_cpu(accelerator: Any) -> bool:
    """Whether ``trainer.accelerator`` picks the CPU: ``cpu``, or ``auto`` (the default) without a GPU."""
    if accelerator in (None, "auto"):
        return not (CUDAAccelerator.is_available() or MPSAccelerator.is_available())
    return accelerator == "cpu"


def check_before_loading(trainer, model: LightningModule, datamodule: LightningDataModule) -> None:
    """The user's settings and files that can be checked before any model loads (one-line errors)."""
    check_strategy(trainer)
    for callback in trainer.callbacks:
        if isinstance(callback, SubjectEvaluator):
            callback.check_checkpoint_cadence(trainer)
    if isinstance(model, DiffusionFineTuner):
        model.check()
        model.speed.check_precision(trainer.precision)
        if isinstance(trainer.strategy, ShardedStrategy) and model.speed.frozen_dtype not in (None, "float32"):
            raise UserError(
                "model.init_args.speed.frozen_dtype: ShardedStrategy keeps one dtype per shard; set frozen_dtype: "
                "null with it (the shards already divide the frozen base's memory by the number of ranks)"
            )
    if isinstance(datamodule, CheckedData):
        datamodule.check()
    if isinstance(model, DiffusionFineTuner) and isinstance(datamodule, SizedData):
        model.family.check_resolution(datamodule.resolution)
    if isinstance(model, DiffusionFineTuner) and isinstance(datamodule, BucketedData):
        for width, height in datamodule.bucket_sizes:
            for side in (width, height):
                model.family.check_resolution(side, f"each side of the bucket {width}x{height} (data.buckets)")
    if isinstance(model, DiffusionFineTuner):  # last: the settings above are named even with a model still missing
        model.family.check_source()


def check_strategy(trainer: Trainer) -> None:
    """Refuse the sharding strategies other than :class:`sdft.sharding.ShardedStrategy` (sampling, evaluation and
    exports would hang at their first gather), ShardedStrategy on one device (nothing to share the model with)
    and what ShardedStrategy cannot carry yet (a weight average)."""
    strategy = trainer.strategy
    if isinstance(strategy, ShardedStrategy):
        devices = trainer.num_devices * trainer.num_nodes
        if devices < 2:
            raise UserError(
                f"trainer.strategy: ShardedStrategy splits the model across devices, and this run has {devices}; "
                "set trainer.devices to 2 or more, or drop the strategy (one device holds the whole model)"
            )
        if any(isinstance(callback, ExponentialMovingAverage) for callback in trainer.callbacks):
            raise UserError(
                "trainer.callbacks: ExponentialMovingAverage does not work with ShardedStrategy yet; drop one of them"
            )
    elif isinstance(strategy, SHARDED_STRATEGIES):
        raise UserError(unsupported_strategy(type(strategy).__name__))


def unsupported_strategy(name: str) -> str:
    """The message refusing a sharding strategy other than sdft's own."""
    return (
        f"trainer.strategy: {name} is not supported; shard with {{class_path: sdft.sharding.ShardedStrategy}}, or "
        "use ddp (every rank holds the whole model)"
    )


def resolve_last_checkpoint(config) -> None:
    """``--ckpt_path last``: resume the newest checkpoint of the run folders ``<save_dir>/<name>/version_*`` of the
    configured logger, or start a new run when there is none, so that one command restarts a preempted job whatever
    state it reached. A checkpoint file that exists is complete (they are renamed into place once written), so the
    newest file is the newest complete checkpoint.
    """
    if config.get("ckpt_path") != "last":
        return
    init_args = getattr(config.get("trainer.logger"), "init_args", None) or {}
    save_dir, name = init_args.get("save_dir"), init_args.get("name")
    if save_dir is None or name is None:
        raise UserError(
            "--ckpt_path last resumes the newest checkpoint in <save_dir>/<name>/version_*: set trainer.logger's "
            "save_dir and name, or give the checkpoint's path"
        )
    runs = Path(save_dir) / name
    found = newest_checkpoint(runs)
    config["ckpt_path"] = None if found is None else str(found)
    rank_zero_info(f"--ckpt_path last: resuming {found}" if found else f"--ckpt_path last: no checkpoint in {runs}")


def newest_checkpoint(runs: Path) -> Path | None:
    """The most recently written checkpoint in ``runs/version_*/checkpoints/`` (staging files aside), or None."""
    files = [path for path in runs.glob("version_*/checkpoints/*.ckpt") if not path.name.startswith(".")]
    return max(files, key=lambda path: (path.stat().st_mtime_ns, path.name), default=None)


def continue_run_folder(config, save_config_kwargs: dict[str, Any]) -> None:
    """Resume into the run folder that wrote ``--ckpt_path``, when the logger would otherwise start a new version.

    A checkpoint ``<save_dir>/<name>/version_N/checkpoints/x.ckpt`` resumed with a TensorBoard or CSV logger of the
    same ``save_dir`` and ``name`` and no explicit version continues ``version_N``: its evaluations, grids, samples
    and checkpoints stay in one folder, and ``config.yaml`` is rewritten with the resumed run's configuration.
    """
    checkpoint, logger = config.get("ckpt_path"), config.get("trainer.logger")
    if not checkpoint or not hasattr(logger, "init_args") or logger.init_args.get("version") is not None:
        return
    run_dir = Path(checkpoint).resolve().parent.parent
    save_dir, name = logger.init_args.get("save_dir"), logger.init_args.get("name")
    if save_dir is None or name is None or Path(checkpoint).resolve().parent.name != "checkpoints":
        return
    if (Path(save_dir) / name / run_dir.name).resolve() == run_dir:
        logger.init_args.version = run_dir.name
        save_config_kwargs["overwrite"] = True


def run_lightning(argv: list[str]) -> None:
    """Run a LightningCLI subcommand, without the warnings every sdft run would print."""
    sdft_cli(argv)


def sdft_cli(argv: list[str], cli_class: type[SdftCLI] = SdftCLI, **options: Any) -> SdftCLI:
    """sdft's LightningCLI (``cli_class``) over any fine-tuner and data module, quiet; ``options`` go to
    LightningCLI (``run``)."""
    quiet_lightning()
    raising = {"exit_on_error": False}  # a mistake raises, so that sdft tells it in one line
    options.setdefault("parser_kwargs", {**raising, **{command: raising for command in LightningCLI.subcommands()}})
    try:
        return cli_class(
            DiffusionFineTuner,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            args=argv,
            **options,
        )
    except ArgumentError as error:
        raise UserError(parser_mistake(str(error))) from error


#: the lines of a jsonargparse error that explain its structure rather than the mistake
PARSER_NOISE = re.compile(
    r"^(- )?(Does not validate|Subtypes:|Errors:|Given value|Expected a <class 'NoneType'>|Parser key|Problem with "
    r"given class_path|Not a valid subclass|Subclass types expect|- a class path|- a dict|$)"
)


def parser_mistake(message: str) -> str:
    """jsonargparse's error (a tree of the union types it tried) as one line: the key, the innermost reason, and
    the class whose options were read."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    classes = re.findall(r"given class_path '([^']+)'", message)
    lines = [line for line in message.splitlines() if not PARSER_NOISE.match(line.strip())]
    reason = max(lines, key=lambda line: len(line) - len(line.lstrip()), default=message).strip()
    reason = re.sub(r'^Parser key "[^"]+":\s*', "", reason).removeprefix("- ")
    key = ".init_args.".join(keys)
    return (f"{key}: " if key else "") + reason + (f" ({classes[-1]})" if classes else "")


def quiet_lightning() -> None:
    """Silence the warnings, tips and progress bars every sdft run would print."""
    for message, category in QUIET:
        warnings.filterwarnings("ignore", message=message, category=category)
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(existing, DropAdvertisements) for existing in rank_zero_log.filters):
        rank_zero_log.addFilter(DropAdvertisements())
    diffusers_logging.disable_progress_bar()  # loading a model is not progress worth a bar
    transformers_logging.disable_progress_bar()


def interruption_exit_code(trainer) -> int:
    """128 + the signal that interrupted the fit, 0 if none did (or there is no trainer yet)."""
    for callback in getattr(trainer, "callbacks", ()):
        if isinstance(callback, InterruptionCheckpoint) and callback.signal is not None:
            return 128 + callback.signal
    return 0
