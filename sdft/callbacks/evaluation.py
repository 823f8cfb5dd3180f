"""Subject-fidelity evaluation at every checkpoint step, and the choice of the step to keep.

At step 0 (the base model), every ``every_n_steps`` and at the end of training, :class:`SubjectEvaluator`
generates a fixed-seed probe set with the weights in training, scores it against the subject photos and logs
``val/clip_i``, ``val/clip_t``, ``val/dino``, ``val/pres`` and ``val/div`` (the diversity of the images of one
prompt). After the last evaluation it applies the selection rule to the whole table, comparing steps probe by probe,
and exports the chosen step to ``<run>/best/``. Files, under ``<run>/evaluation/``:

- ``metrics.jsonl``: one row per evaluation (``step``, the metrics, ``se``: each metric's standard error, ``grid``,
  wall ``seconds``);
- ``scores.jsonl``: one row per evaluation (``step``, and for each metric every probe's score in the order of
  ``probes.json``'s ``scored`` list: subject probes for CLIP-I, CLIP-T and DINO, class probes for PRES, one value
  per prompt for DIV);
- ``step_<N>.png``: the probe images of the evaluation (this rank's share under DDP);
- ``probes.json``: the probes of the grids, in grid order (``columns`` per row), and every ``scored`` probe;
- ``reference.json``: the real-real ceilings of CLIP-I and DINO (null with a single photo: no distinct pairs);
- ``selection.json``: the chosen step, the reason, the candidates, the rejected steps, the rule, the checkpoint
  file the export came from and ``export`` (``best`` only when ``<run>/best/`` was written).

A resumed run keeps its history: the rows and the run and checkpoint folders written so far are part of the
checkpoint, so a run resumed into another folder finds the chosen step's checkpoint in the earlier folders, copies
the earlier grids into its own ``evaluation/`` and writes the whole table into its ``metrics.jsonl``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from sdft.callbacks.checkpoint_files import checkpoint_at, current_checkpoint_dirs, export_step, unique_paths
from sdft.callbacks.export import live_weights_kept
from sdft.callbacks.samples import log_grid
from sdft.errors import UserError
from sdft.evaluation.backbones import DEFAULT_CLIP, DEFAULT_DINO, load_clip, load_dino
from sdft.evaluation.probes import Probe, build_probes, infer_subject, subject_prompts
from sdft.evaluation.scoring import ProbeResult, ProbeScorer
from sdft.evaluation.selection import Selection, select_step
from sdft.evaluation.strength import DEFAULT_SCALES, check_scales, select_scale, strength_record
from sdft.files import write_atomic, write_json, write_jsonl
from sdft.methods.base import DiffusionFineTuner
from sdft.runs import apply_checkpoint, checkpoints_by_step
from sdft.sharding import whole_model
from sdft.tools.grids import image_grid


class SubjectEvaluator(Callback):
    """Score the subject fidelity of generated probe images at checkpoint steps; keep the best step by rule."""

    def __init__(
        self,
        every_n_steps: int = 100,
        identifier: str | None = None,
        class_noun: str | None = None,
        live: bool = False,
        prompts: list[str] | str | None = None,
        num_prompts: int | None = 4,
        images_per_prompt: int = 4,
        class_images: int = 4,
        seed: int = 0,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        resolution: int | None = None,
        batch_size: int = 8,
        clip_model: str = DEFAULT_CLIP,
        dino_model: str = DEFAULT_DINO,
        fidelity: str = "val/dino",
        clip_t_margin: float | None = 0.03,
        pres_margin: float | None = 0.05,
        tie_tolerance: float = 0.02,
        div_margin: float | None = None,
        confidence: float = 0.95,
        tie_standard_errors: float = 1.0,
        export_best: bool = True,
        keep_last_n: int | None = None,
        scales: Sequence[float] | None = DEFAULT_SCALES,
    ) -> None:
        """
        Args:
            every_n_steps: evaluate after every this many steps; a multiple of ModelCheckpoint.every_n_train_steps.
            identifier: the rare token of the instance prompt; None reads it from data.instance_prompt (required
                with data that has no instance prompt, e.g. CaptionDataModule).
            class_noun: the subject's class noun; None reads it from data.instance_prompt (required likewise).
            live: DreamBench's live-subject (pet) prompts instead of the object prompts.
            prompts: probe prompts (list or text file, ``{identifier}``/``{class_noun}`` filled); None: DreamBench.
            num_prompts: keep this many prompts, evenly spread; None keeps all 25 (slow during training).
            images_per_prompt: images per probe prompt, seeds ``seed, seed + 1, ...`` (4: reports/probe_count.md weighs
                the standard errors against the time).
            class_images: images of the bare class prompt (``a dog``) for PRES; 0 disables PRES.
            seed: first seed of every prompt; the same at each evaluation.
            num_inference_steps: denoising steps per probe image.
            guidance_scale: classifier-free guidance scale.
            resolution: image side; None uses the data module's resolution.
            batch_size: images generated per pipeline call.
            clip_model: CLIP for CLIP-I and CLIP-T (``open_clip:<model>/<pretrained>``, ``transformers:<path>``).
            dino_model: DINO ViT for DINO and PRES (a transformers name or path).
            fidelity: the metric the selection rule maximises (``val/dino`` or ``val/clip_i``).
            clip_t_margin: a step is rejected if its CLIP-T is below the base model's by more, beyond the noise;
                None: no limit.
            pres_margin: a step is rejected if its PRES is above the base model's by more, beyond the noise;
                None: no limit.
            tie_tolerance: steps the best fidelity does not clearly lead by more count as tied; the earliest wins.
            div_margin: a step is rejected if its DIV is below the base model's by more, beyond the noise (a
                collapse onto the photos); None: no limit.
            confidence: the one-sided level at which a step's paired change from the base model counts as beyond a
                margin (0.5 compares the means alone).
            tie_standard_errors: a step ties with the best when the best leads it by no more than tie_tolerance
                plus this many standard errors of the lead (the one-standard-error rule; 0: the means alone).
            export_best: export the chosen step to ``<run>/best/`` at the end of training.
            keep_last_n: after each evaluation, delete the checkpoints of evaluated steps other than the last
                ``keep_last_n`` and the step the rule chooses so far (steps not yet evaluated, and interruption
                checkpoints, are kept); None keeps every checkpoint.
            scales: after selection, score the chosen step's adapter at these strengths and record the one the
                rule keeps (``strength`` in ``selection.json``, the model card); null or [] skips it. Methods
                without a strength (full fine-tuning, textual inversion) skip it.
        """
        check_options(every_n_steps, identifier, class_images, fidelity, pres_margin, tie_tolerance)
        check_noise_options(images_per_prompt, div_margin, confidence, tie_standard_errors)
        if keep_last_n is not None and keep_last_n < 1:
            raise UserError(f"SubjectEvaluator.keep_last_n must be at least 1 (or null to keep all), got {keep_last_n}")
        self.keep_last_n = keep_last_n
        self.scales = check_scales(scales)
        self.every_n_steps, self.identifier, self.class_noun, self.live = every_n_steps, identifier, class_noun, live
        self.prompts, self.num_prompts, self.images_per_prompt = prompts, num_prompts, images_per_prompt
        self.class_images, self.seed, self.resolution, self.batch_size = class_images, seed, resolution, batch_size
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.clip_model, self.dino_model, self.export_best = clip_model, dino_model, export_best
        self.rule = {
            "fidelity": fidelity,
            "clip_t_margin": clip_t_margin,
            "pres_margin": pres_margin,
            "tie_tolerance": tie_tolerance,
            "div_margin": div_margin,
            "confidence": confidence,
            "tie_standard_errors": tie_standard_errors,
        }
        self.rows: list[dict[str, Any]] = []
        self.scores: dict[int, dict[str, list[float]]] = {}  # step -> metric -> every probe's score
        self.run_dir = Path()
        self.earlier_run_dirs: list[Path] = []  # run folders of the run this one resumed, from the checkpoint
        self.checkpoint_dirs: list[Path] = []  # every checkpoint folder of this run and the runs it resumed
        self.restored = False
        self.resumed_at: int | None = None

    # -- set-up ---------------------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.run_dir = Path(trainer.log_dir)  # collective under DDP: every rank calls setup
        self.check_checkpoint_cadence(trainer)
        self.scorer = self.prepare(trainer.datamodule)

    def prepare(self, datamodule: LightningDataModule) -> ProbeScorer:
        """Fill in the subject and resolution from the data module where not configured; return the scorer."""
        self.identifier, self.class_noun = self.subject(getattr(datamodule, "instance_prompt", None))
        self.resolution = self.resolution or datamodule.resolution
        return self.build_scorer()

    def subject(self, instance_prompt: str | None) -> tuple[str, str]:
        """The identifier and class noun: as configured, else read from the instance prompt (None: there is none)."""
        if self.identifier and self.class_noun:
            return self.identifier, self.class_noun
        if instance_prompt is None:
            raise UserError(
                "SubjectEvaluator needs the subject's identifier and class noun, and the data module has no "
                "instance_prompt to read them from (e.g. a CaptionDataModule); set SubjectEvaluator's identifier "
                "and class_noun init args (e.g. identifier: sks, class_noun: dog), or remove the callback"
            )
        identifier, class_noun = infer_subject(instance_prompt)
        return self.identifier or identifier, self.class_noun or class_noun

    def build_scorer(self) -> ProbeScorer:
        """The probe set and metrics of this evaluator (identifier, class noun and resolution must be known)."""
        prompts = subject_prompts(self.identifier, self.class_noun, self.live, self.prompts, self.num_prompts)
        class_prompt = f"a {self.class_noun}" if self.class_images > 0 else None
        probes = build_probes(prompts, self.images_per_prompt, class_prompt, self.class_images, self.seed)
        return ProbeScorer(
            probes,
            self.identifier,
            load_clip(self.clip_model),
            load_dino(self.dino_model),
            self.resolution,
            self.num_inference_steps,
            self.guidance_scale,
            self.batch_size,
        )

    def check_checkpoint_cadence(self, trainer: Trainer) -> None:
        """The best step must have a checkpoint: evaluations fall on checkpoint steps."""
        for callback in trainer.checkpoint_callbacks:
            every = callback._every_n_train_steps
            if self.export_best and every and self.every_n_steps % every:
                raise UserError(
                    f"SubjectEvaluator.every_n_steps={self.every_n_steps} is not a multiple of ModelCheckpoint."
                    f"every_n_train_steps={every}: the best step could have no checkpoint; make it a multiple"
                )

    def on_train_start(self, trainer: Trainer, pl_module: DiffusionFineTuner) -> None:
        self.scorer.to(pl_module.device)
        ceilings = self.scorer.set_reference(trainer.datamodule.images)
        self.checkpoint_dirs = unique_paths([*self.checkpoint_dirs, *current_checkpoint_dirs(trainer)])
        if self.restored:
            self.resumed_at = trainer.global_step
        if trainer.is_global_zero:
            reference = {**ceilings, "num_reference_images": len(trainer.datamodule.images)}
            write_json(self.run_dir / "evaluation" / "reference.json", reference)
            self.write_probes(trainer.world_size)
            self.carry_history()
        if not self.rows:  # a resumed run already has its base-model row
            self.evaluate(trainer, pl_module)

    def write_probes(self, world_size: int) -> None:
        """Record the probes of rank 0's grids (its share under DDP), in grid order, in ``probes.json``.

        Args:
            world_size: the number of ranks the probes are split across.
        """
        probes = [probe_record(probe) for probe in self.scorer.probes[::world_size]]
        scored = [probe_record(probe) for probe in self.scorer.probes]
        record = {"columns": self.images_per_prompt, "probes": probes, "scored": scored}
        write_json(self.run_dir / "evaluation" / "probes.json", record)

    def carry_history(self) -> None:
        """On resume: copy in the earlier grids this folder lacks and write the table up to the resume (rank 0)."""
        if not self.rows:
            return
        earlier = [folder for folder in self.earlier_run_dirs if folder != self.run_dir.resolve()]
        for row in self.rows:
            target = self.run_dir / row["grid"]
            source = next((folder / row["grid"] for folder in earlier if (folder / row["grid"]).is_file()), None)
            if not target.is_file() and source is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        self.write_tables()

    def write_tables(self) -> None:
        """Write ``metrics.jsonl`` and ``scores.jsonl`` from the rows and scores so far (rank 0)."""
        write_jsonl(self.run_dir / "evaluation" / "metrics.jsonl", self.rows)
        scores = [{"step": step, **self.scores[step]} for step in sorted(self.scores)]
        write_jsonl(self.run_dir / "evaluation" / "scores.jsonl", scores)

    # -- evaluation -----------------------------------------------------------------------------------------------

    def on_train_batch_end(self, trainer: Trainer, pl_module: DiffusionFineTuner, *args) -> None:
        if trainer.global_step % self.every_n_steps == 0 and not self.evaluated(trainer.global_step):
            values = self.evaluate(trainer, pl_module)
            pl_module.log_dict(values, on_step=True, on_epoch=False, logger=False)

    def on_train_end(self, trainer: Trainer, pl_module: DiffusionFineTuner) -> None:
        if not self.evaluated(trainer.global_step):
            self.evaluate(trainer, pl_module)
        selection = self.select()
        strength = self.measure_strength(trainer, pl_module, selection.step)
        self.record_selection(trainer, pl_module, selection, strength)

    def select(self) -> Selection:
        """The rule applied to the table so far, comparing steps probe by probe."""
        return select_step(self.rows, **self.rule, scores=self.scores)

    def evaluated(self, step: int) -> bool:
        return bool(self.rows) and self.rows[-1]["step"] == step

    def evaluate(self, trainer: Trainer, pl_module: DiffusionFineTuner) -> dict[str, float]:
        """Generate this rank's share of the probes, score them, reduce across ranks, record the row."""
        started = time.perf_counter()
        with whole_model(pl_module):
            result = self.scorer.score(pl_module, trainer.global_rank, trainer.world_size)
        self.record_row(trainer, result, time.perf_counter() - started)
        return result.values

    def record_row(self, trainer: Trainer, result: ProbeResult, seconds: float) -> None:
        step = trainer.global_step
        grid = f"evaluation/step_{step:06d}.png"
        errors = {key: round(value, 6) for key, value in result.errors.items()}
        self.rows.append({"step": step, **result.values, "se": errors, "grid": grid, "seconds": round(seconds, 3)})
        self.scores[step] = result.scores
        if not trainer.is_global_zero:
            return
        grid_image = image_grid(result.images, columns=self.images_per_prompt)
        write_atomic(self.run_dir / grid, lambda file: grid_image.save(file, format="PNG"))
        self.write_tables()
        for logger in trainer.loggers:
            logger.log_metrics(result.values, step=step)
        log_grid(trainer, "evaluation/grid", grid_image, step)
        shown = (f"{key} {value:.3f} ± {result.errors[key]:.3f}" for key, value in result.values.items())
        rank_zero_info(f"step {step}: " + ", ".join(shown))
        if self.keep_last_n is not None:
            self.prune_checkpoints(trainer)

    def prune_checkpoints(self, trainer: Trainer) -> None:
        """Delete the checkpoints ``keep_last_n`` lets go: of evaluated steps, all but the last ``keep_last_n`` and
        the step the rule chooses among the rows so far (rank 0, this run's checkpoint folders only)."""
        evaluated = sorted(int(row["step"]) for row in self.rows)
        keep = set(evaluated[-self.keep_last_n :]) | {self.select().step}
        for folder in current_checkpoint_dirs(trainer):
            if folder.is_dir():
                for step, path in checkpoints_by_step(folder):
                    if step in evaluated and step not in keep:
                        path.unlink(missing_ok=True)

    # -- strength -------------------------------------------------------------------------------------------------

    def measure_strength(self, trainer: Trainer, pl_module: DiffusionFineTuner, step: int) -> dict[str, Any] | None:
        """Score ``step``'s adapter at each of ``scales`` (every rank), apply the rule across them and return the
        ``strength`` record; None where the method has no strength, no scales are set, the chosen step is the base
        model or its checkpoint is gone. Scale 1 reuses the step's own evaluation."""
        if not (self.scales and pl_module.scalable) or step == min(row["step"] for row in self.rows):
            return None
        checkpoint = None if step == trainer.global_step else self.find_checkpoint(trainer, step)
        if step != trainer.global_step and checkpoint is None:
            rank_zero_warn(f"no checkpoint holds step {step}: its adapter's strength was not measured")
            return None
        rows = {1.0: self.row_of(step)} if 1.0 in self.scales else {}
        scores = {1.0: self.scores[step]} if 1.0 in self.scales else {}
        with whole_model(pl_module), live_weights_kept(pl_module):
            if checkpoint is not None:
                apply_checkpoint(pl_module, checkpoint)
            for scale in (scale for scale in self.scales if scale != 1.0):
                started = time.perf_counter()
                with pl_module.adapter_scale(scale):
                    result = self.scorer.score(pl_module, trainer.global_rank, trainer.world_size)
                rows[scale] = self.scale_row(trainer, scale, result, time.perf_counter() - started)
                scores[scale] = result.scores
        base = min(self.rows, key=lambda row: row["step"])
        strength = select_scale(base, rows, self.scores.get(base["step"]), scores, **self.rule)
        rank_zero_info(f"recommended strength of step {step}: {strength.scale:g} ({strength.reason})")
        return strength_record(strength, {scale: without_step(row) for scale, row in rows.items()})

    def scale_row(self, trainer: Trainer, scale: float, result: ProbeResult, seconds: float) -> dict[str, Any]:
        """The metrics of one scale, its grid written (rank 0) as ``evaluation/strength_<scale>.png``."""
        grid = f"evaluation/strength_{scale:.2f}.png"
        if trainer.is_global_zero:
            grid_image = image_grid(result.images, columns=self.images_per_prompt)
            write_atomic(self.run_dir / grid, lambda file: grid_image.save(file, format="PNG"))
            shown = (f"{key} {value:.3f} ± {result.errors[key]:.3f}" for key, value in result.values.items())
            rank_zero_info(f"strength {scale:g}: " + ", ".join(shown))
        errors = {key: round(value, 6) for key, value in result.errors.items()}
        return {**result.values, "se": errors, "grid": grid, "seconds": round(seconds, 3)}

    # -- selection ------------------------------------------------------------------------------------------------

    def record_selection(
        self,
        trainer: Trainer,
        pl_module: DiffusionFineTuner,
        selection: Selection,
        strength: dict[str, Any] | None = None,
    ) -> None:
        with whole_model(pl_module):  # every rank, for a sharded model; rank 0 exports and writes
            if trainer.is_global_zero:
                self.write_selection(trainer, pl_module, selection, strength)

    def write_selection(
        self,
        trainer: Trainer,
        pl_module: DiffusionFineTuner,
        selection: Selection,
        strength: dict[str, Any] | None = None,
    ) -> None:
        """Write ``selection.json``, export the chosen step to ``<run>/best/`` (its model card reads the selection)
        and record the export in ``selection.json``."""
        checkpoint = self.find_checkpoint(trainer, selection.step)
        best = self.run_dir / "best"
        record = {
            "step": selection.step,
            "reason": selection.reason,
            "candidates": list(selection.candidates),
            "rejected": {str(k): v for k, v in selection.rejected.items()},
            "rule": self.rule,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "export": None,
            "values": self.row_of(selection.step),
            "strength": strength,
        }
        write_json(self.run_dir / "evaluation" / "selection.json", record)
        exported = self.export_best and export_step(pl_module, checkpoint, trainer.global_step, selection.step, best)
        if exported:
            write_json(self.run_dir / "evaluation" / "selection.json", {**record, "export": "best"})
        rank_zero_info(f"selected step {selection.step}: {selection.reason}")
        if exported:
            rank_zero_info(f"best step {selection.step} exported to {best}")
        self.warn_if_below_base(selection.step)

    def row_of(self, step: int) -> dict[str, Any]:
        return next(row for row in self.rows if row["step"] == step)

    def warn_if_below_base(self, step: int) -> None:
        """Warn when the chosen step scores below the base model (the earliest row) on the fidelity metric.

        Args:
            step: the chosen step.
        """
        fidelity = self.rule["fidelity"]
        base, chosen = min(self.rows, key=lambda row: row["step"]), self.row_of(step)
        if chosen[fidelity] < base[fidelity]:
            rank_zero_warn(
                f"the chosen step {step} has {fidelity} {chosen[fidelity]:.4f}, below the base model's "
                f"{base[fidelity]:.4f} (step {base['step']}): training has not yet improved subject fidelity; "
                "train longer or at a higher learning rate, or check the subject photos"
            )

    def find_checkpoint(self, trainer: Trainer, step: int) -> Path | None:
        """The checkpoint file of ``step``: in this run's checkpoint folders, else (for a step up to the one this
        run resumed from; later files belong to the abandoned continuation) in the folders of the resumed run.

        Args:
            trainer: the trainer, whose ModelCheckpoint folders come first.
            step: the global step of the checkpoint.
        """
        found = checkpoint_at(current_checkpoint_dirs(trainer), step)
        if found is None and self.resumed_at is not None and step <= self.resumed_at:
            earlier = [*self.checkpoint_dirs, *(folder / "checkpoints" for folder in self.earlier_run_dirs)]
            found = checkpoint_at(unique_paths(earlier), step)
        return found

    def state_dict(self) -> dict[str, Any]:
        run_dirs = unique_paths([*self.earlier_run_dirs, self.run_dir.resolve()])
        return {
            "rows": self.rows,
            "scores": {str(step): scores for step, scores in self.scores.items()},
            "run_dirs": [str(folder) for folder in run_dirs],
            "checkpoint_dirs": [str(folder) for folder in self.checkpoint_dirs],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])
        self.scores = {int(step): scores for step, scores in state_dict.get("scores", {}).items()}
        self.earlier_run_dirs = [Path(folder) for folder in state_dict.get("run_dirs", [])]
        self.checkpoint_dirs = [Path(folder) for folder in state_dict.get("checkpoint_dirs", [])]
        self.restored = True


def check_options(
    every_n_steps: int,
    identifier: str | None,
    class_images: int,
    fidelity: str,
    pres_margin: float | None,
    tie_tolerance: float,
) -> None:
    """Raise a :class:`UserError` naming the first bad SubjectEvaluator option (see its ``__init__``)."""
    if every_n_steps < 1:
        raise UserError(f"SubjectEvaluator.every_n_steps must be >= 1, got {every_n_steps}")
    if identifier is not None and len(identifier.split()) != 1:
        raise UserError(f"SubjectEvaluator.identifier must be one word (the rare token, e.g. sks), got {identifier!r}")
    if fidelity not in ("val/dino", "val/clip_i"):
        raise UserError(f"SubjectEvaluator.fidelity must be val/dino or val/clip_i, got {fidelity!r}")
    if class_images < 1 and pres_margin is not None:
        raise UserError(
            f"SubjectEvaluator.class_images={class_images} turns PRES off, but pres_margin={pres_margin} limits it; "
            "set pres_margin: null as well, or class_images to 1 or more"
        )
    if tie_tolerance < 0:
        raise UserError(f"SubjectEvaluator.tie_tolerance must be >= 0, got {tie_tolerance}")


def check_noise_options(
    images_per_prompt: int, div_margin: float | None, confidence: float, tie_standard_errors: float
) -> None:
    """Raise a :class:`UserError` naming the first bad noise-related SubjectEvaluator option."""
    if not 0.5 <= confidence < 1.0:
        raise UserError(f"SubjectEvaluator.confidence must be in [0.5, 1) (e.g. 0.95), got {confidence}")
    if tie_standard_errors < 0:
        raise UserError(f"SubjectEvaluator.tie_standard_errors must be >= 0 (e.g. 1), got {tie_standard_errors}")
    if div_margin is not None and images_per_prompt < 2:
        raise UserError(
            f"SubjectEvaluator.div_margin={div_margin} limits DIV, which needs two images of a prompt; set "
            f"images_per_prompt to 2 or more (got {images_per_prompt}), or div_margin: null"
        )


def without_step(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row without its training step (a scale's row is of the chosen step)."""
    return {key: value for key, value in row.items() if key != "step"}


def probe_record(probe: Probe) -> dict[str, Any]:
    """A probe as a JSON object: ``prompt``, ``seed`` and ``class_prompt`` (an image of the bare class prompt)."""
    return {"prompt": probe.prompt, "seed": probe.seed, "class_prompt": probe.is_class}
