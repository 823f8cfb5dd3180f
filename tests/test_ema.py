"""The moving average of the trained weights: the update rule by hand, the average of a real fit against the weights
of every step, its export through diffusers' stock loader, exact resumes and one update per optimizer step."""

from __future__ import annotations

import pytest
import torch
import yaml
from lightning.pytorch import Callback
from safetensors.torch import load_file
from training import brief_fit, checkpointer, cpu_trainer, lora_tuner, stock_pipeline, subject_data

from sdft.averaging import ema_decay, update_average
from sdft.callbacks import ExponentialMovingAverage
from sdft.cli import main
from sdft.errors import UserError
from sdft.methods.lora import LORA_WEIGHTS

#: the averaged run: the average starts at step 1 and is updated after steps 3 and 5, with warm-up
STEPS = 6
OPTIONS = {"decay": 0.5, "start_step": 1, "every_n_steps": 2, "warmup": True}


class WeightRecorder(Callback):
    """The trained tensors after every optimizer step (and at the start), and the number of batches seen."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.batches = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.batches += 1
        self.record(trainer, pl_module)

    def record(self, trainer, pl_module) -> None:
        self.weights[trainer.global_step] = {
            key: value.clone() for key, value in pl_module.trainable_state_dict().items()
        }


def expected_average(weights, decay, start_step=0, every_n_steps=1, warmup=False) -> dict[str, torch.Tensor]:
    """The average written out step by step, in float64, from the recorded weights of every step."""
    average = {key: value.double() for key, value in weights[start_step].items()}
    updates = 0
    for step in range(start_step + 1, max(weights) + 1):
        if (step - start_step) % every_n_steps == 0:
            rate = min(decay, (1 + updates) / (10 + updates)) if warmup else decay
            average = {key: rate * value + (1 - rate) * weights[step][key].double() for key, value in average.items()}
            updates += 1
    return average


def assert_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key].double(), value.double(), rtol=1e-5, atol=1e-7, msg=key)


# -- the rule ------------------------------------------------------------------------------------------------------


def test_update_rule_by_hand():
    average = [torch.tensor([0.0, 4.0]), torch.tensor([[1.0]])]
    update_average(average, [torch.tensor([2.0, 0.0]), torch.tensor([[3.0]], dtype=torch.bfloat16)], decay=0.5)
    assert average[0].tolist() == [1.0, 2.0] and average[1].tolist() == [[2.0]]
    update_average(average, [torch.tensor([3.0, 2.0]), torch.tensor([[2.0]], dtype=torch.bfloat16)], decay=0.5)
    assert average[0].tolist() == [2.0, 2.0] and average[1].tolist() == [[2.0]]
    assert average[1].dtype == torch.float32
    update_average(average, [torch.tensor([12.0, 2.0]), torch.tensor([[2.0]])], decay=0.75)
    assert average[0].tolist() == [4.5, 2.0]


def test_warmup_lowers_the_decay_of_the_first_updates():
    assert ema_decay(0.999, 0, warmup=True) == pytest.approx(0.1)
    assert ema_decay(0.999, 8, warmup=True) == pytest.approx(0.5)
    assert ema_decay(0.3, 8, warmup=True) == 0.3
    assert ema_decay(0.999, 0, warmup=False) == 0.999


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decay": 1.0}, r"ExponentialMovingAverage.decay must be in \(0, 1\), got 1.0"),
        ({"decay": 0.0}, r"ExponentialMovingAverage.decay must be in \(0, 1\), got 0.0"),
        ({"start_step": -1}, "ExponentialMovingAverage.start_step must be >= 0, got -1"),
        ({"every_n_steps": 0}, "ExponentialMovingAverage.every_n_steps must be >= 1, got 0"),
    ],
)
def test_bad_options_name_the_key(options, message):
    with pytest.raises(UserError, match=f"^trainer.callbacks: {message}"):
        ExponentialMovingAverage(**options)


def test_a_bad_decay_in_a_config_is_one_line(capsys, tmp_path):
    arguments = ["fit", "--config", "configs/quickstart_tiny.yaml", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    callback = ["--trainer.callbacks+=sdft.callbacks.ExponentialMovingAverage", "--trainer.callbacks.decay=1.5"]
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, *callback])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sdft: error: trainer.callbacks: ExponentialMovingAverage.decay must be in (0, 1), got 1.5; e.g. 0.999 "
        "averages about the last 1000 steps"
    ]


# -- in a fit ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def averaged(tiny_sd1, subject_dir, tmp_path_factory):
    """A LoRA fit with the average and the weights of every step, checkpointed every two steps."""
    root = tmp_path_factory.mktemp("averaged")
    ema, recorder, model = ExponentialMovingAverage(**OPTIONS), WeightRecorder(), lora_tuner(tiny_sd1)
    trainer = cpu_trainer(root, STEPS, [recorder, ema, checkpointer(root, 2)])
    trainer.fit(model, datamodule=subject_data(subject_dir))
    return root, model, ema, recorder.weights


def test_the_average_follows_the_rule_over_the_weights_of_every_step(averaged):
    _, _, ema, weights = averaged
    assert sorted(weights) == list(range(STEPS + 1)) and (ema.num_updates, ema.step) == (2, STEPS)
    assert_close(ema.average, expected_average(weights, **OPTIONS))
    assert all(value.dtype == torch.float32 for value in ema.average.values())


def test_the_export_loads_in_the_stock_loader_with_the_average_and_keeps_the_live_weights(averaged, tiny_sd1):
    root, model, ema, weights = averaged
    pipeline = stock_pipeline(tiny_sd1)
    pipeline.load_lora_weights(root / "ema")
    loaded = {
        f"family.unet.{name.replace('.default_0.', '.default.')}": value
        for name, value in pipeline.unet.named_parameters()
        if ".lora_" in name
    }
    assert loaded.keys() == ema.average.keys()
    assert all(torch.equal(loaded[key], value) for key, value in ema.average.items())
    live = model.trainable_state_dict()
    assert all(torch.equal(live[key], value) for key, value in weights[STEPS].items())
    assert all((live[key] - value).abs().max() > 1e-4 for key, value in ema.average.items() if "lora_B" in key)


def test_a_resumed_run_continues_the_same_average(averaged, tiny_sd1, subject_dir, tmp_path):
    root, _, ema, _ = averaged
    checkpoint = torch.load(root / "checkpoints" / "step=4.ckpt", weights_only=False)
    assert checkpoint["callbacks"][ema.state_key]["num_updates"] == 1
    resumed = ExponentialMovingAverage(**OPTIONS)
    trainer = cpu_trainer(tmp_path, STEPS, [resumed, checkpointer(tmp_path, 2)])
    trainer.fit(lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir), ckpt_path=root / "checkpoints/step=4.ckpt")
    assert (resumed.num_updates, resumed.step) == (2, STEPS)
    assert_close(resumed.average, ema.average)
    assert (tmp_path / "ema" / LORA_WEIGHTS).is_file()


def test_gradient_accumulation_updates_once_per_optimizer_step(tiny_sd1, subject_dir, tmp_path):
    ema, recorder = ExponentialMovingAverage(decay=0.5), WeightRecorder()
    trainer = cpu_trainer(tmp_path, 3, [recorder, ema], accumulate_grad_batches=2)
    trainer.fit(lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir))
    assert recorder.batches == 6 and (ema.num_updates, ema.step) == (3, 3)
    assert_close(ema.average, expected_average(recorder.weights, decay=0.5))


def test_an_interrupted_fit_writes_no_average(tiny_sd1, subject_dir, tmp_path):
    class Interrupt(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            raise KeyboardInterrupt

    ema = ExponentialMovingAverage(decay=0.5)
    trainer = cpu_trainer(tmp_path, 4, [ema, Interrupt()])
    with pytest.raises(SystemExit):
        trainer.fit(lora_tuner(tiny_sd1), datamodule=subject_data(subject_dir))
    assert trainer.interrupted and ema.num_updates == 1
    assert not (tmp_path / "ema").exists()


def test_the_command_line_adds_the_average_beside_the_final_export(tmp_path):
    callback = ["--trainer.callbacks+=sdft.callbacks.ExponentialMovingAverage", "--trainer.callbacks.decay=0.5"]
    run = brief_fit("configs/quickstart_tiny.yaml", tmp_path, {}, *callback, evaluate=False, max_steps=2)
    average, final = load_file(run / "ema" / LORA_WEIGHTS), load_file(run / "final" / LORA_WEIGHTS)
    assert average.keys() == final.keys()
    assert any(not torch.equal(average[key], final[key]) for key in final)
    callbacks = yaml.safe_load((run / "config.yaml").read_text())["trainer"]["callbacks"]
    assert callbacks[-1]["class_path"] == "sdft.callbacks.ExponentialMovingAverage"
    assert callbacks[-1]["init_args"]["decay"] == 0.5
