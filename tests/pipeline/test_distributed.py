"""Data-parallel training (torchrun, gloo, 2 CPU processes) against the one-process run with the same global batch:
the oracle is the single-process Trainer, which never touches torch.distributed. The runs are in float64, and the
tolerance allows only for the order of float sums (each rank averages its shard, then the shards are summed).

Why float64: in float32 the EP contrast amplifies that summation order. On the tiny DCHN below, the C-EP estimate
of one batch of 32 and the mean of the estimates of its two halves differ by 0.27% (relative, first layer) in
float32 and by 1.6e-12 in float64: dE/dtheta at s_+beta and s_-beta are batch means of large terms that cancel."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eqprop.training.config import load_config
from eqprop.training.data import Augmentation, epoch_batches, load_digits
from eqprop.training.distributed import Context, shard
from eqprop.training.results import read_run
from eqprop.training.trainer import Trainer

WORKER = Path(__file__).resolve().parents[1] / "ddp_worker.py"
COMMON = [
    "limit_train=80",
    "limit_test=40",
    "batch_size=32",
    "progress=false",
    "tensorboard=false",
    "precision=float64",
]
JOBS = {  # one per family: an EP rule on a DCHN (with flips and crops), a PC rule, RHEL
    "cep": [
        "free_iterations=4",
        "nudged_iterations=2",
        "channels=[4,8,8]",
        "crop_padding=1",
        "flip=true",
        "epochs=2",
    ],
    "pc": [
        "model=pcn",
        "algorithm=PC-CEP",
        "channels=[4,8]",
        "hidden=[]",
        "gains=[0.8,0.8,0.8]",
        "lrs=[0.05,0.05,0.05]",
        "beta=0.05",
        "nudged_iterations=3",
        "epochs=2",
    ],
    "rhel": ["epochs=2", "hidden=[16]", "lrs=[0.05,0.05]"],  # on top of configs/rhel/digits_rhel.yaml
    # a resistive network: the g >= 0 projection after each step, on every rank (persistent start, momentum)
    "drn": ["model=drn", "hidden=[16]", "epochs=2", "lrs=[0.2]"],
}
RHEL_CONFIG = "configs/rhel/digits_rhel.yaml"


def torchrun(jobs, timeout=300, extra_env=None, module=None):
    """Run ``jobs`` (the worker's JSON) or ``module`` arguments under torchrun with 2 gloo processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    target = ["-m", "eqprop", *module] if module else [str(WORKER), json.dumps({"jobs": jobs})]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=Path.cwd())


def job(name, out):
    """The worker's job and the in-process oracle's config (RHEL starts from its shipped config)."""
    config = RHEL_CONFIG if name == "rhel" else None
    return {"config": config, "overrides": [*JOBS[name], *COMMON, f"out_dir={out}"]}


def weights(run_dir):
    return torch.load(Path(run_dir) / "checkpoint_last.pt", weights_only=False)["network"]


def assert_same_weights(a, b, rel=1e-7):  # measured: 3e-9 after 2 epochs; float32 gives 2e-4
    for key in a:
        scale = float(a[key].abs().max()) + 1e-12
        err = float((a[key] - b[key]).abs().max())
        assert err <= rel * scale, (key, err, scale)


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """One torchrun launch: the three families, a 3-epoch run, and the same run stopped in epoch 2 by rank 1."""
    root = tmp_path_factory.mktemp("ddp")
    jobs = [job(name, root / name) for name in JOBS]
    # the public code's conventions: the persistent start's carried state must survive a resume under any number
    # of ranks (the checkpoint holds the global batch's state, each rank takes its rows back)
    public_code = ["init=persistent", "first=odd", "bias_init=uniform", "nudged_output=iterate"]
    long = [*JOBS["cep"][:-1], "epochs=3", *public_code, *COMMON]
    jobs.append({"overrides": [*long, f"out_dir={root / 'straight'}"]})
    jobs.append({"overrides": [*long, f"out_dir={root / 'stopped'}"], "stop": [2, 0, 1]})
    done = torchrun(jobs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, done.stdout, long


@pytest.mark.parametrize("name", list(JOBS))
def test_two_ranks_follow_the_one_process_run_with_the_same_global_batch(two_rank_runs, tmp_path, name):
    root, stdout, _ = two_rank_runs
    assert "device=cpu x 2 ranks, algorithm=" in stdout and f"run dir {root / name}" in stdout
    spec = job(name, tmp_path / "one")
    one = Trainer(load_config(spec["config"], spec["overrides"]), log=lambda s: None)
    history = one.fit()
    assert_same_weights(weights(tmp_path / "one"), weights(root / name))
    ranks = read_run(root / name).metrics
    for mine, theirs in zip(history, ranks):
        for key in ("train_error", "test_error", "test_top5_error"):  # counts summed over the ranks
            assert mine[key] == theirs[key], (key, mine[key], theirs[key])
        for key in ("train_loss", "test_loss"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-6), key  # the cost uses a float32 output
    assert not (root / name / "metrics.jsonl").read_text().count('"epoch": 1,') > 1  # rank 0 alone writes
    starts = [json.loads(line) for line in (root / name / "provenance.jsonl").read_text().splitlines()]
    assert [p["ranks"] for p in starts] == [2]  # the run records how many ranks trained it
    if name == "drn":  # the projection ran on both ranks: g >= 0 and some conductances sit at the bound
        g = [t for key, t in weights(root / name).items() if key.startswith("g")]
        assert all(bool((t >= 0).all()) for t in g) and sum(int((t == 0).sum()) for t in g) > 0


def test_a_stop_on_one_rank_stops_both_and_resume_matches_an_uninterrupted_run(two_rank_runs, tmp_path):
    root, stdout, long = two_rank_runs
    assert "rank 0: interrupted by SIGTERM" in stdout and "rank 1: interrupted by SIGTERM" in stdout
    ckpt = torch.load(root / "stopped" / "checkpoint_last.pt", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["partial"]["batch"] == 1  # both stopped after batch 0 of epoch 2
    assert [t.shape[0] for t in ckpt["algorithm"]["batch"]] == [32] * 4  # both ranks' 16 rows: the global batch

    # the number of ranks may change on resume: one process continues the 2-rank checkpoint
    single = shutil.copytree(root / "stopped", tmp_path / "single")
    Trainer.resume(single, log=lambda s: None).fit()
    assert_same_weights(weights(root / "straight"), weights(single))

    # and two ranks resume it, through the command line under torchrun
    done = torchrun(None, module=["train", "--resume", str(root / "stopped")])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_same_weights(weights(root / "straight"), weights(root / "stopped"))
    assert [r["epoch"] for r in read_run(root / "stopped").metrics] == [1, 2, 3]


def test_a_rank_that_dies_makes_the_other_exit_instead_of_hanging(tmp_path):
    """Rank 1 dies in its second epoch: rank 0 ends with one line naming rank 1 (no traceback), the run's
    checkpoint of epoch 1 stays intact."""
    t0 = time.perf_counter()
    run = tmp_path / "run"
    dying = {"overrides": [*JOBS["cep"], *COMMON, "dist_timeout=60", f"out_dir={run}"], "die": [2, 0, 1]}
    done = torchrun([dying], timeout=240)
    assert done.returncode != 0 and time.perf_counter() - t0 < 120
    assert "exitcode" in done.stderr.lower() or "failed" in done.stderr.lower()
    lines = [line for line in done.stderr.splitlines() if line.startswith("eqprop: error: rank 0 of 2: lost rank 1")]
    assert len(lines) == 1 and "checkpoint is intact" in lines[0], done.stderr[-3000:]
    # torchrun's launcher reports the failed child with a traceback of its own; no rank's traceback runs through eqprop
    frames = [line for line in done.stderr.splitlines() if line.lstrip().startswith('File "')]
    assert not any("eqprop/" in frame for frame in frames), done.stderr[-3000:]
    state = torch.load(run / "checkpoint_last.pt", weights_only=False)
    assert state["epoch"] == 1 and [r["epoch"] for r in read_run(run).metrics] == [1]


def test_the_shards_of_a_batch_are_the_batch():
    """Every rank draws the same permutation and augmentation; the shards, put together, are the one-process
    batches exactly (flips and crops included), for batches that do not divide evenly."""
    data = load_digits(image_size=8)
    images, labels = data.train_images[:70], data.train_labels[:70]
    kw = dict(augment=Augmentation(flip=True, crop_padding=2, padding_mode="edge"))
    whole = list(epoch_batches(data, images, labels, 32, torch.Generator().manual_seed(3), **kw))
    parts = [
        list(
            epoch_batches(
                data,
                images,
                labels,
                32,
                torch.Generator().manual_seed(3),
                shard=lambda n, r=r: shard(n, Context(r, 3)),
                **kw,
            )
        )
        for r in range(3)
    ]
    for b, x, y in whole:
        assert torch.equal(torch.cat([p[b][1] for p in parts]), x) and torch.equal(
            torch.cat([p[b][2] for p in parts]), y
        )
    sizes = [[len(p[b][2]) for p in parts] for b in range(len(whole))]
    assert sizes == [[10, 11, 11], [10, 11, 11], [2, 2, 2]]
