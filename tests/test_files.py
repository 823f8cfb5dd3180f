"""Atomic writes: complete or absent, and as readable as a file or folder made the ordinary way."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from sdft import assets
from sdft.caching import EncodingCache
from sdft.files import (
    HOST,
    WriteError,
    make_folder,
    write_atomic,
    write_folder_atomic,
    write_json,
    write_named_atomic,
    write_text_atomic,
)


@pytest.fixture(params=[0o022, 0o002, 0o027], ids=["022", "002", "027"])
def umask(request: pytest.FixtureRequest) -> int:
    """Run the test under this umask (the process's own is restored afterwards)."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fill(staging: Path) -> str:
    """A build that writes a file the ordinary way, as diffusers' ``save_pretrained`` does."""
    (staging / "weights.bin").write_bytes(b"weights")
    return "weights.bin"


def test_a_folder_written_atomically_has_the_mode_of_an_ordinary_folder(tmp_path: Path, umask: int) -> None:
    (tmp_path / "ordinary").mkdir()
    assert write_folder_atomic(tmp_path / "best", fill) == "weights.bin"
    assert oct(mode(tmp_path / "best")) == oct(mode(tmp_path / "ordinary")) == oct(0o777 & ~umask)
    assert oct(mode(tmp_path / "best" / "weights.bin")) == oct(0o666 & ~umask)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best", "ordinary"]  # no staging folder left


def test_a_replaced_folder_keeps_the_ordinary_mode_and_only_the_new_contents(tmp_path: Path, umask: int) -> None:
    write_folder_atomic(tmp_path / "final", lambda staging: (staging / "old.txt").write_text("old"))
    write_folder_atomic(tmp_path / "final", fill)
    assert [path.name for path in (tmp_path / "final").iterdir()] == ["weights.bin"]
    assert oct(mode(tmp_path / "final")) == oct(0o777 & ~umask)
    assert [path.name for path in tmp_path.iterdir()] == ["final"]


def test_a_file_written_atomically_has_the_mode_open_gives(tmp_path: Path, umask: int) -> None:
    with open(tmp_path / "ordinary.txt", "w") as file:
        file.write("x")
    write_atomic(tmp_path / "atomic.png", lambda file: file.write(b"png"))
    assert (tmp_path / "atomic.png").read_bytes() == b"png"
    assert oct(mode(tmp_path / "atomic.png")) == oct(mode(tmp_path / "ordinary.txt")) == oct(0o666 & ~umask)


def test_safetensors_files_in_a_folder_or_alone_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """safetensors creates its files private (0o600): users sharing a run folder could not read its exports."""
    tensors = {"weight": torch.ones(2)}
    write_folder_atomic(tmp_path / "best", lambda staging: save_file(tensors, staging / "lora.safetensors"))
    write_named_atomic(tmp_path / "alone.safetensors", lambda staging: save_file(tensors, staging))
    assert oct(mode(tmp_path / "best" / "lora.safetensors")) == oct(0o666 & ~umask)
    assert oct(mode(tmp_path / "alone.safetensors")) == oct(0o666 & ~umask)


def test_the_staging_a_killed_writer_left_is_swept_by_the_next_write(tmp_path: Path) -> None:
    """A SIGKILL mid-write leaves the hidden staging behind; the next write of the same path on this host removes
    it, but never the staging of a writer still running or of another host sharing the folder."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    stale_folder = tmp_path / f".best.{HOST}-{dead}-{'a' * 16}"
    stale_folder.mkdir()
    (stale_folder / "weights.bin").write_bytes(b"half")
    stale_file = tmp_path / f".run.json.{HOST}-{dead}-{'b' * 16}.tmp"
    stale_file.write_bytes(b"half")
    live = tmp_path / f".best.{HOST}-{os.getpid()}-{'c' * 16}"
    other_host = tmp_path / f".best.elsewhere-{dead}-{'d' * 16}"
    live.mkdir()
    other_host.mkdir()
    write_folder_atomic(tmp_path / "best", fill)
    write_text_atomic(tmp_path / "run.json", "{}")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["best", "run.json", live.name, other_host.name])


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path: Path) -> None:
    def fail(file) -> None:
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "image.png", fail)
    assert list(tmp_path.iterdir()) == []


def no_space(*arguments) -> None:
    """A writer that fills the disk: safetensors' own error, as its writer raises it."""
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def read_only(file) -> None:
    file.write(b"half")
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def test_a_full_disk_during_an_export_is_one_line_naming_the_folder_and_keeps_the_old_export(tmp_path: Path) -> None:
    export = tmp_path / "exports" / "step=000040"
    write_folder_atomic(export, fill)

    def fill_then_run_out(staging: Path) -> None:
        (staging / "README.md").write_text("card")
        save_file({"w": torch.ones(3)}, staging / "pytorch_lora_weights.safetensors")
        no_space()

    with pytest.raises(WriteError) as error:
        write_folder_atomic(export, fill_then_run_out)
    assert str(error.value) == (
        f"cannot write {export} (No space left on device): free disk space and run it again; what was there is kept"
    )
    assert sorted(path.name for path in export.parent.iterdir()) == ["step=000040"]
    assert [path.name for path in export.iterdir()] == ["weights.bin"]


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda path: write_named_atomic(path, no_space), "(No space left on device): free disk space"),
        (lambda path: write_atomic(path, read_only), "(Read-only file system): the filesystem is read-only: write"),
    ],
    ids=["safetensors-out-of-space", "read-only"],
)
def test_a_refused_write_is_one_line_naming_the_file_and_keeps_what_was_there(write, expected, tmp_path: Path) -> None:
    path = tmp_path / "lora.safetensors"
    path.write_bytes(b"the old file")
    with pytest.raises(WriteError) as error:
        write(path)
    assert str(error.value).startswith(f"cannot write {path} {expected}")
    assert str(error.value).endswith("; what was there is kept")
    assert path.read_bytes() == b"the old file" and [p.name for p in tmp_path.iterdir()] == ["lora.safetensors"]


def test_writes_under_a_file_name_the_path_for_records_cache_entries_and_report_folders(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file where a folder goes")
    record = tmp_path / "runs" / "evaluation" / "selection.json"
    with pytest.raises(WriteError, match=rf"cannot write {record} \(Not a directory\): a file stands where a folder"):
        write_json(record, {"step": 3})
    cache = EncodingCache(tmp_path / "runs" / "cache")
    with pytest.raises(WriteError, match=r"cannot write .*runs/cache/\w+\.safetensors \(Not a directory\)"):
        cache.store("a prompt", {"embedding": torch.ones(2)})
    with pytest.raises(WriteError, match=r"cannot write .*runs \(File exists\): a file stands where a folder"):
        make_folder(tmp_path / "runs")
    assert str(error_line(lambda: make_folder(tmp_path / "runs" / "report"))).endswith("; nothing was written")


def error_line(write) -> WriteError:
    with pytest.raises(WriteError) as error:
        write()
    assert "\n" not in str(error.value)
    return error.value


def test_a_built_in_asset_is_as_readable_as_an_ordinary_folder(tmp_path: Path, umask: int, monkeypatch) -> None:
    monkeypatch.setenv("SDFT_CACHE", str(tmp_path))
    folder = Path(assets.resolve("builtin:toy-class"))
    assert oct(mode(folder)) == oct(0o777 & ~umask)
    images = sorted(folder.glob("*.png"))
    assert len(images) == 8 and {oct(mode(image)) for image in images} == {oct(0o666 & ~umask)}


KILLED_MID_REPLACE = """
import os, signal, sys
from pathlib import Path
from sdft import files

replace, moves = os.replace, []

def replace_then_die(source, target):  # SIGKILL between moving the old folder aside and moving the new one in
    replace(source, target)
    moves.append(target)
    if len(moves) == 1:
        os.kill(os.getpid(), signal.SIGKILL)

files.os.replace = replace_then_die
files.write_folder_atomic(Path(sys.argv[1]), lambda staging: (staging / "weights").write_text("new"))
"""


def test_a_replacement_killed_half_way_keeps_the_old_folder_and_the_next_write_lands(tmp_path: Path) -> None:
    export = tmp_path / "best"
    write_folder_atomic(export, lambda staging: (staging / "weights").write_text("old"))
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_REPLACE, str(export)], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not export.exists()  # the kill landed in the window: the old folder is aside, the new one not in place
    write_folder_atomic(export, lambda staging: (staging / "weights").write_text("newer"))
    assert (export / "weights").read_text() == "newer"
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith(".best.")) == ["best"]


def test_a_reader_after_a_half_way_kill_finds_the_old_folder(tmp_path: Path) -> None:
    export = tmp_path / "best"
    write_folder_atomic(export, lambda staging: (staging / "weights").write_text("old"))
    subprocess.run([sys.executable, "-c", KILLED_MID_REPLACE, str(export)], check=False)
    built = write_folder_atomic(export, lambda staging: None, replace=False)  # e.g. a built-in asset's builder
    assert built is None and (export / "weights").read_text() == "old"


def test_an_export_killed_while_building_leaves_no_folder_a_later_run_would_trust(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\nfrom pathlib import Path\nfrom sdft.files import write_folder_atomic\n"
        "def build(staging):\n    (staging / 'model.safetensors').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "write_folder_atomic(Path(sys.argv[1]), build)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "final")], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "final").exists()
    assert all(path.name.startswith(".final.") for path in tmp_path.iterdir())  # only a hidden staging folder
