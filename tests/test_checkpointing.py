"""Checkpoints are complete or absent, even when the writer is killed and the temporary folder is elsewhere."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
import torch

from sdft.checkpointing import AtomicCheckpointIO, read_checkpoint
from sdft.errors import UserError

SIZE = 16_000_000


def write_checkpoints_forever(folder: Path, temporary: Path, weights: torch.Tensor, saved) -> None:
    """Save checkpoints ``step=N.ckpt`` of ``weights`` in a loop, with the temporary folder on ``temporary``.

    It runs in a forked child, so it does no tensor arithmetic: torch's thread pool does not survive a fork.
    """
    os.environ["TMPDIR"] = str(temporary)
    tempfile.tempdir = None
    for step in range(1000):
        AtomicCheckpointIO().save_checkpoint(
            {"global_step": step, "state_dict": {"w": weights}}, folder / f"step={step}.ckpt"
        )
        saved.set()


def kill_writer_mid_write(folder: Path, temporary: Path, delay: float) -> None:
    """Fork a process that saves 64 MB checkpoints in a loop and SIGKILL it ``delay`` s after its first save."""
    context = multiprocessing.get_context("fork")
    saved = context.Event()
    weights = torch.arange(SIZE, dtype=torch.float32)
    writer = context.Process(target=write_checkpoints_forever, args=(folder, temporary, weights, saved), daemon=True)
    writer.start()
    try:
        assert saved.wait(timeout=60), "the writer saved nothing in 60 s"
        time.sleep(delay)
    finally:  # never leave a writer behind, whatever happened
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm")
def test_a_writer_killed_mid_write_leaves_only_loadable_checkpoints(tmp_path):
    interrupted = 0
    for round_, delay in enumerate((0.1, 0.3)):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        kill_writer_mid_write(folder, Path("/dev/shm"), delay)
        interrupted += any(path.name.endswith(".tmp") for path in folder.iterdir())
        checkpoints = sorted(folder.glob("*.ckpt"))
        assert checkpoints
        for path in checkpoints:
            state = read_checkpoint(path, mmap=True)
            assert state["state_dict"]["w"][-1] == SIZE - 1
            assert path.name == f"step={state['global_step']}.ckpt"
    assert interrupted, "no kill landed during a write: the test proved nothing"


def test_a_truncated_checkpoint_is_named_in_the_error(tmp_path):
    path = tmp_path / "step=3.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 3, "w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(UserError, match=r"checkpoint .*step=3\.ckpt cannot be read .*resume from an earlier one"):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(UserError, match=r"step=4\.ckpt not found"):
        read_checkpoint(tmp_path / "step=4.ckpt")


def test_saved_checkpoints_get_the_mode_of_an_ordinary_file(tmp_path):
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "a.ckpt")
    (tmp_path / "b.ckpt").write_bytes(b"")
    assert (tmp_path / "a.ckpt").stat().st_mode == (tmp_path / "b.ckpt").stat().st_mode


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a malicious file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    path, marker = tmp_path / "step=5.ckpt", tmp_path / "pwned"
    torch.save({"global_step": 5, "state_dict": {"w": torch.ones(2)}, "payload": Payload(marker)}, path)
    for load in (read_checkpoint, AtomicCheckpointIO().load_checkpoint):  # sdft's commands, and Lightning's resume
        with pytest.raises(UserError, match=r"step=5\.ckpt holds objects that unpickling would build by running code"):
            load(path)
    assert not marker.exists()
    safe = tmp_path / "step=6.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 6, "state_dict": {"w": torch.ones(2)}, "name": "x"}, safe)
    assert read_checkpoint(safe)["global_step"] == 6


def test_running_out_of_disk_during_a_save_keeps_the_checkpoint_that_was_there(tmp_path, monkeypatch):
    path = tmp_path / "step=7.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 7, "w": torch.ones(3)}, path)
    original = path.read_bytes()

    def full_disk(obj, file) -> None:  # half the bytes land, then the filesystem is full
        file.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"no space left to write checkpoint \S*step=7\.ckpt .*--ckpt_path last"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 7, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == original
    assert [entry.name for entry in tmp_path.iterdir()] == ["step=7.ckpt"]  # no temporary left behind
