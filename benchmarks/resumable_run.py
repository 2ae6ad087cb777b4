"""A long training run in stretches, on a GPU machine lent for minutes at a time (docs/reproductions.md).

    python benchmarks/resumable_run.py stage-cifar ../shared/data/cifar10 /root/data   # .xz batches -> pickles
    python benchmarks/resumable_run.py start RUN_DIR CONFIG [key=value ...]           # or resume RUN_DIR
    python benchmarks/resumable_run.py status RUN_DIR                                 # epochs done, last row
    python benchmarks/resumable_run.py stop RUN_DIR                                   # SIGTERM, wait for the checkpoint
    python benchmarks/resumable_run.py pack RUN_DIR DEST [--best] [--live]            # checkpoint -> parts + manifest
    python benchmarks/resumable_run.py poll RUN_DIR DEST [--wait S]                   # wait; pack it as it trains
    python benchmarks/resumable_run.py unpack SRC RUN_DIR                             # parts -> checkpoint, verified

``start`` launches ``eqprop train`` in its own session (``setsid``), so it outlives the command that started it,
logging to ``RUN_DIR/stdout.log``; when RUN_DIR already holds a run it resumes it (``eqprop train --resume``).
``stop`` sends SIGTERM: the trainer finishes its batch, writes ``checkpoint_last.pt`` and exits. ``pack`` splits
the last checkpoint (``--best``: the best one too) into parts of at most ``--chunk-mib`` MiB and tars the run's
small files (config, metrics, log, TensorBoard events), with a manifest of SHA-256 sums: a DCHN run packs into 5
or 6 files under 16 MiB, within what a lent machine's $OUT returns (8 files, 64 MiB); ``unpack`` checks every
part and rebuilds the run directory. ``poll`` waits, then packs the run while it trains (``pack --live``) and
prints its status: each poll of a lent machine brings the newest checkpoint back.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CHECKPOINTS = ("checkpoint_last.pt", "checkpoint_best.pt")
FILES_TAR = "run_files.tar"
PID_FILE = "launcher.pid"  # one of the run directory's launcher files (eqprop.training.run_directory)
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


class StretchError(Exception):
    """A step of the procedure cannot go on; the message says what is wrong and what to do."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- data ----------------------------------------------------------------------------------------------------
def stage_cifar(src: Path, dest: Path) -> Path:
    """Decompress CIFAR-10's ``cifar-10-batches-py/*.xz`` (or copy plain files) from ``src`` into
    ``dest/cifar-10-batches-py``, the layout ``data_dir=dest`` reads; files already there are kept."""
    src_dir = src / "cifar-10-batches-py" if (src / "cifar-10-batches-py").is_dir() else src
    out = dest / "cifar-10-batches-py"
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    for name in CIFAR_FILES:
        target = out / name
        if target.exists():
            continue
        if (src_dir / f"{name}.xz").exists():
            tmp = target.with_suffix(".tmp")
            with lzma.open(src_dir / f"{name}.xz") as fin, tmp.open("wb") as fout:
                shutil.copyfileobj(fin, fout)
            tmp.replace(target)
        elif (src_dir / name).exists():
            shutil.copyfile(src_dir / name, target)
        else:
            missing.append(name)
    if missing:
        raise StretchError(f"{src_dir} lacks {missing} (as NAME or NAME.xz); staged the others into {out}")
    return out


# ---- the training process ------------------------------------------------------------------------------------
def _pid(run_dir: Path) -> int | None:
    """The pid of the run's training process, if it is still alive."""
    try:
        pid = int((run_dir / PID_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return None if state == "Z" else pid
    except (FileNotFoundError, IndexError):
        return pid


def _refuse_while_training(run_dir: Path, action: str) -> None:
    """A StretchError when a process still trains ``run_dir``: ``action`` must wait for `stop`."""
    pid = _pid(run_dir)
    if pid is not None:
        raise StretchError(f"{run_dir} is already being trained by pid {pid}; `stop` it before {action}")


def start(run_dir: Path, config: str | None, overrides: list[str], until: int | None = None) -> int:
    """Launch (or resume) the run in its own session; returns the pid. ``until``: the stretch ends after that
    epoch, with its checkpoint (``stop_after_epoch``)."""
    _refuse_while_training(run_dir, "starting it again")
    if until is not None and until < 1:
        raise StretchError(f"--until must be an epoch >= 1, got {until}")
    stretch = [] if until is None else [f"stop_after_epoch={until}"]
    resuming = (run_dir / "config.json").exists()
    if resuming:
        if config is not None or overrides:
            raise StretchError(f"{run_dir} holds a run: resume it without a config or overrides")
        cmd = [sys.executable, "-m", "eqprop", "train", "--resume", str(run_dir), *stretch]
    else:
        if config is None:
            raise StretchError(f"{run_dir} holds no run yet: give the config to start it from")
        cmd = [sys.executable, "-m", "eqprop", "train", config, *overrides, f"out_dir={run_dir}", "progress=false"]
        cmd += stretch
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "stdout.log").open("a") as log:
        log.write(f"\n{_marker('start')}: {' '.join(cmd)}\n")
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        wrapper = [sys.executable, str(Path(__file__).resolve()), "_supervise", str(run_dir), "--", *cmd]
        proc = subprocess.Popen(wrapper, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    (run_dir / PID_FILE).write_text(str(proc.pid))
    return proc.pid


def _marker(event: str, note: str = "") -> str:
    """A line of ``stdout.log`` marking the start or end of a stretch, with its Unix time."""
    now = time.time()
    return f"# {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))} {event} {now:.1f}{note}"


def wall_clock(run_dir: Path) -> float:
    """Seconds the run has spent in stretches, summed from the ``start``/``end`` markers of ``stdout.log`` (a
    stretch still running counts to now; one that left no end marker, killed outright, to the log's last write if
    it is the last, else to its last ``snapshot`` marker, written by a live ``pack``)."""
    log = run_dir / "stdout.log"
    if not log.exists():
        return 0.0
    total, begun, seen = 0.0, None, None
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] != "#" or parts[3] not in ("start", "end", "snapshot"):
            continue
        when = float(parts[4].rstrip(":"))
        if parts[3] == "snapshot":  # a live pack: a stretch moved on from there ran at least until then
            seen = when
        elif parts[3] == "start":
            if begun is not None and seen is not None and seen > begun:  # a stretch lost after its snapshot
                total += seen - begun
            begun = when
        elif begun is not None:
            total, begun = total + when - begun, None
    if begun is not None:
        total += (time.time() if _pid(run_dir) is not None else log.stat().st_mtime) - begun
    return total


def supervise(run_dir: Path, cmd: list[str]) -> int:
    """Run ``cmd`` and append an ``end`` marker with its exit status when it exits. SIGTERM reaches the whole
    process group; this process outlives it to write the marker (a no-op handler, which ``exec`` resets, so the
    trainer still gets the default action until it installs its own)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    proc = subprocess.Popen(cmd)
    code = proc.wait()  # a signal to this process does not interrupt the wait (PEP 475)
    with (run_dir / "stdout.log").open("a") as log:
        log.write(f"{_marker('end', f' (exit status {code})')}\n")
    return code


def status(run_dir: Path) -> dict:
    """Whether the run is training, its completed epochs, its wall clock so far, where each stretch ran (from
    ``provenance.jsonl``: start time, epoch, git commit, device) and its last metrics row."""
    rows = []
    if (run_dir / "metrics.jsonl").exists():
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    starts = []
    if (run_dir / "provenance.jsonl").exists():
        starts = [json.loads(line) for line in (run_dir / "provenance.jsonl").read_text().splitlines() if line]
    return {
        "running": _pid(run_dir) is not None,
        "epochs_done": len(rows),
        "wall_clock_s": round(wall_clock(run_dir), 1),
        "stretches": [{k: p.get(k) for k in ("started", "epoch", "commit", "device_name")} for p in starts],
        "last": rows[-1] if rows else None,
    }


def stop(run_dir: Path, timeout: float = 300.0) -> bool:
    """SIGTERM the run's process group and wait until it has exited (its checkpoint written); False if none ran."""
    pid = _pid(run_dir)
    if pid is None:
        return False
    os.killpg(os.getpgid(pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid(run_dir) is not None:
        if time.monotonic() > deadline:
            raise StretchError(f"pid {pid} did not exit within {timeout:.0f} s of SIGTERM; its checkpoint may be old")
        time.sleep(0.5)
    return True


# ---- moving a run --------------------------------------------------------------------------------------------
def pack(run_dir: Path, dest: Path, chunk_bytes: int = 15 << 20, best: bool = False, live: bool = False) -> dict:
    """Put the run's small files (config, metrics, log, TensorBoard events) into ``run_files.tar`` and split
    ``checkpoint_last.pt`` (and ``checkpoint_best.pt`` with ``best``) into parts of at most ``chunk_bytes``, with
    ``manifest.json`` (sizes and SHA-256 of every part and whole file): few files, each small enough to move.

    ``live``: pack while the run trains. Each checkpoint is read through one open file, and the trainer replaces
    a checkpoint by renaming a finished file over it, so the parts are one whole checkpoint. The resumed run then
    goes on from that checkpoint's epoch and rewrites its metrics from it."""
    if not (run_dir / "config.json").exists():
        raise StretchError(f"{run_dir} is not a run directory (no config.json)")
    if not live:
        _refuse_while_training(run_dir, "packing it")
    elif _pid(run_dir) is not None:
        with (run_dir / "stdout.log").open("a") as log:
            log.write(f"{_marker('snapshot')}\n")
    if chunk_bytes < 1:
        raise StretchError(f"the chunk size must be positive, got {chunk_bytes} bytes")
    dest.mkdir(parents=True, exist_ok=True)
    skip = set(CHECKPOINTS) | {".lock", PID_FILE}
    small = [
        p for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name not in skip and not p.name.endswith(".tmp")
    ]
    with tarfile.open(dest / FILES_TAR, "w") as tar:
        for path in small:
            tar.add(path, arcname=str(path.relative_to(run_dir)))
    manifest: dict = {
        "files": [str(p.relative_to(run_dir)) for p in small],
        "files_sha256": _sha256(dest / FILES_TAR),
        "checkpoints": {},
    }
    for name in CHECKPOINTS[: 2 if best else 1]:
        path = run_dir / name
        if not path.exists():
            continue
        parts, whole = [], hashlib.sha256()
        with path.open("rb") as f:  # one handle: a checkpoint renamed over this one meanwhile is not mixed in
            for i, block in enumerate(iter(lambda: f.read(chunk_bytes), b"")):
                part = dest / f"{name}.part{i:03d}"
                part.write_bytes(block)
                whole.update(block)
                parts.append({"name": part.name, "size": len(block), "sha256": hashlib.sha256(block).hexdigest()})
        size = sum(p["size"] for p in parts)
        manifest["checkpoints"][name] = {"size": size, "sha256": whole.hexdigest(), "parts": parts}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def poll(run_dir: Path, dest: Path, wait: float = 0.0, chunk_bytes: int = 15 << 20) -> dict:
    """Wait up to ``wait`` seconds (less when the run stops), then pack the run into ``dest`` (``live``, so it
    may still be training) and return its status. On a lent machine every poll thus brings the newest checkpoint
    back through $OUT, and a machine taken back mid-stretch loses at most the epochs since the last poll."""
    if not (run_dir / "config.json").exists():
        raise StretchError(f"{run_dir} is not a run directory (no config.json)")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and _pid(run_dir) is not None:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    pack(run_dir, dest, chunk_bytes, live=True)
    return status(run_dir)


def unpack(src: Path, run_dir: Path) -> dict:
    """Rebuild a packed run in ``run_dir`` after checking every part against the manifest (a part that is missing
    or damaged is named, and nothing of that checkpoint is written)."""
    try:
        manifest = json.loads((src / "manifest.json").read_text())
    except FileNotFoundError:
        raise StretchError(f"{src} holds no manifest.json: it is not the output of `pack`") from None
    _refuse_while_training(run_dir, "unpacking into it")
    tar_path = src / FILES_TAR
    if not tar_path.exists() or _sha256(tar_path) != manifest["files_sha256"]:
        raise StretchError(f"{tar_path} is missing or damaged (SHA-256 differs from the manifest); copy it again")
    for name, entry in manifest["checkpoints"].items():
        for part in entry["parts"]:
            path = src / part["name"]
            if not path.exists():
                raise StretchError(f"{path} is missing: copy every part of {name} listed in {src / 'manifest.json'}")
            if path.stat().st_size != part["size"] or _sha256(path) != part["sha256"]:
                raise StretchError(f"{path} is damaged (size or SHA-256 differs from the manifest); copy it again")
    run_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (and the security releases before it)
            tar.extractall(run_dir, filter="data")
        else:
            tar.extractall(run_dir)
    for name, entry in manifest["checkpoints"].items():
        tmp = run_dir / f"{name}.tmp"
        with tmp.open("wb") as out:
            for part in entry["parts"]:
                out.write((src / part["name"]).read_bytes())
        if _sha256(tmp) != entry["sha256"]:
            tmp.unlink()
            raise StretchError(f"{name} rebuilt from its parts does not match the manifest's SHA-256")
        tmp.replace(run_dir / name)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stage-cifar", help="decompress CIFAR-10's .xz batches into DEST/cifar-10-batches-py")
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    p = sub.add_parser("start", help="start (or resume) a run in the background")
    p.add_argument("run_dir", type=Path)
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--until", type=int, metavar="EPOCH", help="end this stretch after that epoch, with its checkpoint")
    for name in ("status", "stop"):
        sub.add_parser(name).add_argument("run_dir", type=Path)
    p = sub.add_parser("pack", help="split the checkpoints into parts, copy the small files")
    p.add_argument("run_dir", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--chunk-mib", type=float, default=15.0, help="largest part, MiB (default 15)")
    p.add_argument("--best", action="store_true", help="also pack checkpoint_best.pt")
    p.add_argument("--live", action="store_true", help="pack while the run trains (its newest checkpoint)")
    p = sub.add_parser("poll", help="wait (less if the run stops), print the status, pack the run while it trains")
    p.add_argument("run_dir", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait first (default 0)")
    p.add_argument("--chunk-mib", type=float, default=15.0, help="largest part, MiB (default 15)")
    p = sub.add_parser("unpack", help="rebuild a packed run directory")
    p.add_argument("src", type=Path)
    p.add_argument("run_dir", type=Path)
    p = sub.add_parser("_supervise")  # internal: what `start` runs in the background
    p.add_argument("run_dir", type=Path)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "_supervise":
        return supervise(args.run_dir, args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd)
    try:
        if args.command == "stage-cifar":
            print(f"staged CIFAR-10 in {stage_cifar(args.src, args.dest)}")
        elif args.command == "start":
            print(f"training {args.run_dir} as pid {start(args.run_dir, args.config, args.overrides, args.until)}")
        elif args.command == "status":
            print(json.dumps(status(args.run_dir)))
        elif args.command == "stop":
            print("stopped" if stop(args.run_dir) else f"{args.run_dir} was not training")
        elif args.command == "pack":
            manifest = pack(args.run_dir, args.dest, int(args.chunk_mib * (1 << 20)), args.best, args.live)
            parts = sum(len(c["parts"]) for c in manifest["checkpoints"].values())
            print(f"packed {args.run_dir} into {args.dest}: {len(manifest['files'])} files, {parts} checkpoint parts")
        elif args.command == "poll":
            print(json.dumps(poll(args.run_dir, args.dest, args.wait, int(args.chunk_mib * (1 << 20)))))
        else:
            unpack(args.src, args.run_dir)
            print(f"rebuilt {args.run_dir} from {args.src}")
    except StretchError as exc:
        print(f"resumable_run: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
