"""A run directory: everything one run writes, and nothing the training loop needs to know about files.

It holds ``config.json`` (the resolved config, in sections), ``provenance.jsonl`` (per start or resume: command,
versions, git commit, host, device), per-epoch metrics (``metrics.jsonl`` and
``metrics.csv``), TensorBoard logs (``tensorboard/``), diagnostics (``diagnostics.jsonl``) and checkpoints
(``checkpoint_last.pt``, ``checkpoint_best.pt``), each written atomically: a crash or a full disk mid-write leaves
the previous checkpoint intact. :func:`rng_state` / :func:`restore_rng` capture every random generator a run
draws from, so a checkpoint resumes exactly.

A run directory belongs to one run: a new run refuses a directory that already holds files; ``overwrite`` clears
an earlier run's directory first, but only one that eqprop made (it holds the marker ``.eqprop-run``), and only
the files eqprop wrote there (:data:`RUN_FILES`, TensorBoard's event files): anything else stays. Every run
holds an exclusive lock (``.lock``, released when the process ends, however it ends), so a second process cannot
write into a directory in use.
"""

from __future__ import annotations

import csv
import datetime
import errno
import io
import json
import os
import pickle
import platform
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RunError

__all__ = [
    "RunDirectory",
    "rng_state",
    "restore_rng",
    "atomic_save",
    "read_checkpoint",
    "lock_directory",
    "lock_file",
    "MODES",
    "MARKER",
    "RUN_FILES",
    "is_run_directory",
    "seed_everything",
]

MODES = ("new", "resume", "overwrite")
# files a launcher may put into a run directory before the run starts (``eqprop study`` logs each run there;
# benchmarks/resumable_run.py also keeps the pid of the training process)
LAUNCHER_FILES = (".lock", "stdout.log", "launcher.pid")
# the marker eqprop writes into every run directory it makes: ``--overwrite`` clears only a folder that holds it
MARKER = ".eqprop-run"
# what eqprop writes into a run directory: all that ``--overwrite`` deletes (a launcher's files stay: a study
# writes the run's output into stdout.log while the run starts)
RUN_FILES = (
    "config.json",
    "provenance.jsonl",
    "metrics.jsonl",
    "metrics.csv",
    "diagnostics.jsonl",
    "diagnostics.png",
    "checkpoint_last.pt",
    "checkpoint_best.pt",
    "checkpoint_last.pt.tmp",
    "checkpoint_best.pt.tmp",
    "teacher.pt",
    "extends.json",
)
TENSORBOARD = "tensorboard"  # TensorBoard's event files (events.out.tfevents.*) in it are eqprop's
# set by ``eqprop study`` for the runs it launches: its pid, so that a run stops if the study process dies
PARENT_PID_VAR = "EQPROP_PARENT_PID"


def git_commit() -> str | None:
    """The git commit of the checkout this package runs from, "+dirty" when it has uncommitted changes; None for
    an installed copy (no git, or a repository that does not track this package's files)."""
    where = str(Path(__file__).resolve().parents[1])  # the eqprop package folder
    try:
        tracked = subprocess.run(
            ["git", "-C", where, "ls-files", "--error-unmatch", "__init__.py"], capture_output=True, timeout=10
        )
        head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if tracked.returncode != 0 or head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance(device: torch.device) -> dict[str, Any]:
    """Where and with what a run (or one stretch of it) is running: time, command, versions, git commit, host and
    device. One line of the run directory's ``provenance.jsonl`` per start or resume."""
    from .. import __version__

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": list(sys.argv),
        "eqprop": __version__,
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
    }


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to ``path`` through a temporary file and a rename: a crash or a full disk mid-write leaves the
    previous file intact. A full disk (or another write error) is a :class:`RunError` naming the device and file.

    The state is serialised in memory first and written with plain file I/O, whose errors carry the operating
    system's reason (torch.save straight to a file reports a full disk only as "unexpected pos")."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        where = _device_of(path.parent)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = f"no space left on {where}" if full else f"{exc.strerror or exc} on {where}"
        raise RunError(
            f"{reason} while writing {path}; the previous {path.name} is intact"
            + ("; free some space, then resume the run" if full else "")
        ) from None


def _device_of(folder: Path) -> str:
    """The file system holding ``folder``, as a user knows it: its mount point (and device, where /proc says)."""
    folder = folder.resolve()
    mount = folder
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == str(mount):
                return f"{fields[0]} (mounted at {mount})"
    except OSError:
        pass
    return f"the file system mounted at {mount}"


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's state; a file that is truncated or not an eqprop checkpoint is a :class:`RunError` naming it."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path} does not exist (is {path.parent} a run directory?)")
    try:
        try:  # tensors and plain values only: opening a checkpoint runs no code from it
            state = torch.load(path, map_location=device, weights_only=True)
        except pickle.UnpicklingError as exc:
            if "Weights only load failed" not in str(exc):
                raise
            # a checkpoint of an eqprop before 0.2 (numpy's generator state pickled as numpy objects)
            state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # unpickling a damaged file raises anything: EOFError, RuntimeError, UnpicklingError...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunError(f"{path} is damaged or not a checkpoint ({type(exc).__name__}: {reason})") from None
    if not isinstance(state, dict) or not {"network", "epoch"} <= set(state):
        raise RunError(f"{path} is not an eqprop checkpoint (it holds no network weights and epoch)")
    return state


def lock_file(handle: Any, blocking: bool = False) -> bool:
    """Take an exclusive lock on an open file (waiting for it when ``blocking``); False when another process holds
    it. The operating system releases it when the file is closed or the process ends."""
    try:
        import fcntl
    except ImportError:  # Windows (a blocking lock there gives up after about 10 s)
        import msvcrt

        mode = msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK  # type: ignore[attr-defined]
        try:
            msvcrt.locking(handle.fileno(), mode, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


def lock_directory(path: Path, what: str = "eqprop process") -> Any:
    """The open ``.lock`` file of ``path``, exclusively locked for this process (closing it unlocks); a RunError
    naming the holder when another process has it."""
    try:
        handle = open(path / RunDirectory.LOCK, "a+")
    except OSError as exc:
        raise RunError(f"cannot write into {path} ({exc.strerror}); choose a writable directory") from None
    if not lock_file(handle):
        handle.seek(0)
        owner = handle.read().strip() or "pid unknown"
        handle.close()
        raise RunError(f"{path} is in use by another {what} ({owner}); wait for it to end, or choose another directory")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The state of torch's, CUDA's, numpy's and Python's global generators and of ``generator``."""
    return {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": _plain_numpy_state(),
        "python": random.getstate(),
    }


def _plain_numpy_state() -> list[Any]:
    """numpy's global generator state as plain values (a checkpoint then opens with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's (CPU and CUDA), numpy's and Python's global generators with ``seed`` and return a torch
    Generator seeded alike, for one's own training loop (batch order, augmentation): what the Trainer does."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["numpy"]
    if isinstance(saved, list):  # plain values (older checkpoints hold numpy's own tuple)
        name, keys, pos, has_gauss, cached = saved
        saved = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
    np.random.set_state(saved)
    random.setstate(state["python"])


def _shown(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def is_run_directory(path: str | Path) -> bool:
    """Whether ``path`` holds a run of eqprop's (its ``config.json``)."""
    return (Path(path) / "config.json").is_file()


class RunDirectory:
    """The files of one run in ``path`` (created if missing), locked for this process; ``tensorboard`` adds
    TensorBoard logs. ``mode``: ``new`` (the directory must be empty), ``resume`` (it must hold a run) or
    ``overwrite`` (an earlier run's files are deleted first)."""

    LAST, BEST, LOCK = "checkpoint_last.pt", "checkpoint_best.pt", ".lock"

    def __init__(
        self, path: str | Path, tensorboard: bool = True, log: Callable[[str], None] = print, mode: str = "new"
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.path = Path(path)
        self.tensorboard, self.log = tensorboard, log
        self._writer: Any = None
        self._lock: Any = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(
                f"cannot create the run directory {self.path} ({exc.strerror}); choose a writable out_dir"
            ) from None
        self.acquire()
        try:
            self._check(mode)
        except BaseException:
            self.release()
            raise
        marker = self.path / MARKER
        if not marker.exists():  # this directory is now an eqprop run's
            created = datetime.datetime.now(datetime.timezone.utc).isoformat()
            marker.write_text(json.dumps({"made_by": "eqprop", "created": created}) + "\n")
        for tmp in self.path.glob("*.tmp"):  # a checkpoint write that a crash or a full disk cut short
            tmp.unlink()
            self.log(f"eqprop: removed {tmp}, an unfinished checkpoint write; the previous checkpoint is intact")

    def _check(self, mode: str) -> None:
        held = sorted(p.name for p in self.path.iterdir() if p.name not in (*LAUNCHER_FILES, MARKER))
        is_run = (self.path / "config.json").exists()
        if mode == "resume" and not is_run:
            raise RunError(f"cannot resume: {self.path} holds no run (no config.json)")
        if mode == "new" and held:
            what = "an earlier run" if is_run else "other files"
            raise RunError(
                f"{self.path} already holds {what} ({_shown(held)}); a run directory belongs to one run: continue it "
                f"with `eqprop train --resume {self.path}`, replace it with --overwrite, or choose another out_dir"
            )
        if mode == "overwrite" and held:
            if not (self.path / MARKER).exists():
                older = (
                    " If it is a run of an eqprop from before run directories carried the marker, resume it once "
                    "(--resume adds the marker) or delete its files yourself."
                    if is_run
                    else ""
                )
                raise RunError(
                    f"--overwrite deletes only a run directory that eqprop made (one holding its marker {MARKER}); "
                    f"{self.path} has no marker and holds {_shown(held)}, which may not be eqprop's, so nothing was "
                    f"deleted.{older} Choose another out_dir"
                )
            deleted, kept = self._clear()
            self.log(
                f"eqprop: --overwrite: deleted the earlier run's {len(deleted)} files in {self.path}"
                + (f"; kept {len(kept)} that eqprop did not write ({_shown(kept)})" if kept else "")
            )

    def _clear(self) -> tuple[list[str], list[str]]:
        """Delete what eqprop wrote here (:data:`RUN_FILES`, TensorBoard's event files); return (deleted, kept)."""
        deleted: list[str] = []
        for name in RUN_FILES:
            target = self.path / name
            if target.is_file() or target.is_symlink():
                target.unlink()
                deleted.append(name)
        board = self.path / TENSORBOARD
        if board.is_dir() and not board.is_symlink():
            for event in sorted(board.rglob("events.out.tfevents.*")):
                if event.is_file():
                    event.unlink()
                    deleted.append(str(event.relative_to(self.path)))
            for folder in sorted((p for p in board.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                if not any(folder.iterdir()):
                    folder.rmdir()
            if not any(board.iterdir()):
                board.rmdir()
        kept = sorted(p.name for p in self.path.iterdir() if p.name not in (*LAUNCHER_FILES, MARKER))
        return deleted, kept

    # ---- the lock ----------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Hold the directory's exclusive lock (a no-op when held); another process holding it is a RunError."""
        if self._lock is None:
            self._lock = lock_directory(self.path)

    def release(self) -> None:
        """Release the lock (closing the file releases it; the operating system does the same when a process
        ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        """Flush and close the logs and release the lock."""
        self.close_logs()
        self.release()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    # ---- config and metrics ------------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any]) -> None:
        (self.path / "config.json").write_text(json.dumps(config, indent=2))

    def read_config(self) -> dict[str, Any]:
        return json.loads((self.path / "config.json").read_text())

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(record) + "\n")

    def rewrite_metrics(self, history: list[dict[str, float]]) -> None:
        """``metrics.jsonl`` and ``metrics.csv`` as exactly ``history`` (a resumed checkpoint's epochs)."""
        with open(self.path / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in history)
        self._write_csv(history)

    def _write_csv(self, history: list[dict[str, float]]) -> None:
        with open(self.path / "metrics.csv", "w", newline="") as f:
            if history:
                columns = list(dict.fromkeys(k for row in history for k in row))  # test_once: the last row's test
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(history)

    def write_metrics(self, row: dict[str, float], history: list[dict[str, float]]) -> None:
        """Append an epoch's row to ``metrics.jsonl``, rewrite ``metrics.csv`` and log the row to TensorBoard."""
        self.append_jsonl("metrics.jsonl", row)
        self._write_csv(history)
        if self._writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    self._writer.add_scalar(f"epoch/{key}", value, row["epoch"])
            self._writer.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard scalar (nothing without TensorBoard logs)."""
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def hparams(self, config: dict[str, Any], results: dict[str, float]) -> None:
        """The run's settings beside its results in TensorBoard's HPARAMS tab (lists and None written as text)."""
        if self._writer is None:
            return
        plain = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in sorted(config.items())}
        self._writer.add_hparams(plain, {f"hparam/{k}": v for k, v in results.items()}, run_name=".")
        self._writer.flush()

    # ---- TensorBoard -------------------------------------------------------------------------------------
    def open_logs(self) -> None:
        if not self.tensorboard or self._writer is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the JSON/CSV metrics still hold everything
            self.log("eqprop: tensorboard is not installed; skipping TensorBoard logs (pip install tensorboard)")
            return
        self._writer = SummaryWriter(str(self.path / "tensorboard"))

    def close_logs(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ---- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any], best: bool = False) -> Path:
        """Write ``checkpoint_last.pt`` atomically (and ``checkpoint_best.pt`` when ``best``)."""
        atomic_save(state, self.last)
        if best:
            atomic_save(state, self.best)
        return self.last

    def load_checkpoint(self, which: str = "last", device: torch.device | str = "cpu") -> dict[str, Any]:
        """A checkpoint's state ("last" or "best"; "best" falls back to "last" where there is none)."""
        path = self.best if which == "best" and self.best.exists() else self.last
        return read_checkpoint(path, device)
