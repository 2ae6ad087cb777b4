"""Hyperparameter search on Optuna (``pip install "eqprop[tune]"``): ``eqprop tune CONFIG --space SPACE.yaml``.

The search space is a YAML mapping from config keys (flat or ``section.key``) to distributions::

    beta: {type: float, low: 0.05, high: 0.5}
    lrs: {type: float, low: 0.005, high: 0.2, log: true}     # a list key: one value for every layer group
    batch_size: {type: int, low: 32, high: 256, log: true}
    algorithm: {type: categorical, choices: [CEP, NEP]}

Each trial is a normal run directory (``OUT/<study>/trial_0007``); a diverged trial is recorded as failed. The
objective is the run's best validation error when the config holds out a validation split (``validation=0.1``), and
then the trials never evaluate the test set (``evaluate_test=false``): it is read only by the final runs of the chosen
settings. Without a split the objective is the best test error (a warning says that the search then looks at it).
Trials report every epoch, so a pruner (median or Hyperband) stops poor ones. Workers on any number of machines
cooperate through the storage: a SQLite file locally, a PostgreSQL/MySQL URL, or Optuna's journal file
(``journal:PATH``). With a database storage each running trial sends heartbeats; the trial of a worker that was
killed is marked failed once its heartbeat is stale and is retried with the same parameters by the next worker
(Optuna's retry callback). Optuna 5's journal storage has no heartbeat, so there a killed worker's trial stays
RUNNING: use a database to get retries. After the search, :func:`tune_status` lists the trials,
:func:`param_importances` apportions the objective's variance among the searched keys, and
:func:`write_best_config` writes the winner's config for its final runs (whole training set, ``test_once``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ..errors import ConfigError
from .config import FLAT, SECTIONS, TrainConfig, load_config, parse_overrides
from .run_directory import lock_file

__all__ = [
    "Distribution",
    "read_space",
    "make_storage",
    "run_tune",
    "make_pruner",
    "replay_pruner",
    "objective_key",
    "baseline_params",
    "tune_status",
    "param_importances",
    "plot_trials",
    "write_best_config",
    "retried_from",
    "quiet_optuna",
    "fail_stale_trials",
]

KINDS = ("float", "int", "categorical")


@dataclass
class Distribution:
    """One searched key: ``float``/``int`` between ``low`` and ``high`` (``log``: log-uniform; ``step``), or
    ``categorical`` over ``choices``."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def _known_key(key: str) -> bool:
    if "." in key:
        section, name = key.split(".", 1)
        return section in SECTIONS and name in {f for f in SECTIONS[section].__dataclass_fields__}
    return key in FLAT


def read_space(path: str | Path, config: str | Path | None = None, overrides: Sequence[str] = ()) -> list[Distribution]:
    """The search space of a YAML file, each key checked against the config (its name, its distribution, and
    that the config builds at both ends of its range); a bad entry is a ConfigError naming the file and key."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"search space {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"search space {path} must map config keys to distributions, e.g. beta: {{type: float, ...}}")
    base = load_config(config, overrides)
    space = []
    for key, spec in raw.items():
        where = f"search space {path}, key {key!r}"
        if not _known_key(str(key)):
            raise ConfigError(f"{where}: not a config key (see eqprop train --help-config)")
        if not isinstance(spec, dict) or spec.get("type") not in KINDS:
            raise ConfigError(f"{where}: give a mapping with type one of {list(KINDS)}, got {spec!r}")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
        if unknown:
            raise ConfigError(f"{where}: unknown fields {sorted(unknown)}; valid: type, low, high, log, step, choices")
        kind = spec["type"]
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: categorical needs a non-empty list of choices")
            if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
                raise ConfigError(f"{where}: categorical choices must be numbers, strings, booleans or null")
            dist = Distribution(str(key), kind, choices=choices)
        else:
            bounds = spec.get("low"), spec.get("high")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bounds):
                raise ConfigError(
                    f"{where}: needs finite numbers low < high, got low={bounds[0]!r}, high={bounds[1]!r}"
                )
            low, high = float(bounds[0]), float(bounds[1])  # type: ignore[arg-type]  # checked just above
            if not low < high:
                raise ConfigError(f"{where}: needs low < high, got low={low}, high={high}")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log scale needs low > 0, got {low}")
            if kind == "int" and not (low.is_integer() and high.is_integer()):
                raise ConfigError(f"{where}: int bounds must be whole numbers, got {low}, {high}")
            dist = Distribution(str(key), kind, low, high, bool(spec.get("log")), spec.get("step"))
        for value in dist.extremes():  # the config must accept the whole range
            try:
                parse_overrides([_override(dist.key, value, base)], base)
            except ConfigError as exc:
                raise ConfigError(f"{where}: the value {value!r} is not valid here ({exc})") from None
        space.append(dist)
    return space


def _override(key: str, value: Any, base: TrainConfig) -> str:
    """``key=value``, one value broadcast to a list key of ``base`` (``lrs``: every layer group)."""
    current = getattr(base, key.split(".")[-1], None)
    if isinstance(current, list) and not isinstance(value, list):
        value = [value]
    return f"{key}={json.dumps(value)}"


def baseline_params(space: Sequence[Distribution], base: TrainConfig) -> dict[str, Any]:
    """The config's own values of the searched keys, as a trial's parameters (``eqprop tune --baseline``): the
    starting point ranked like every trial. A list key must hold one value (the space searches one for all)."""
    params: dict[str, Any] = {}
    for dist in space:
        value = getattr(base, dist.key.split(".")[-1])
        if isinstance(value, list):
            if len(set(value)) != 1:
                raise ConfigError(
                    f"--baseline: the config's {dist.key}={value} differ, and the space searches one value for all; "
                    "give the config one value or leave --baseline out"
                )
            value = value[0]
        if value is None and None not in dist.choices:
            raise ConfigError(
                f"--baseline: the config leaves {dist.key} unset (null: the data set's or model's own choice); "
                f"give it a value of the space (e.g. {dist.key}={json.dumps(dist.extremes()[0])}) to run it as the "
                "baseline"
            )
        if dist.kind == "categorical":
            inside = value in dist.choices
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            inside = number and dist.low <= value <= dist.high
        if not inside:
            valid = dist.choices if dist.kind == "categorical" else f"[{dist.low}, {dist.high}]"
            raise ConfigError(f"--baseline: the config's {dist.key}={value!r} lies outside the space's {valid}")
        params[dist.key] = value
    return params


def _local_storage(out: Path) -> str:
    """The default storage of a search whose trials go to ``out``: the SQLite file ``out/tune.db``."""
    return f"sqlite:///{(out / 'tune.db').resolve()}"


def objective_key(validation: float) -> str:
    """What a trial minimises: the best validation error, or the best test error without a validation split."""
    return "val_error" if validation > 0 else "test_error"


def make_storage(url: str, heartbeat: int | None = 60) -> Any:
    """An Optuna storage: ``sqlite:///FILE``, a PostgreSQL/MySQL URL (with heartbeats and retries of the trials
    of killed workers), or ``journal:FILE`` (a journal file, safe on shared file systems)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:") :]))
    if "://" not in url:
        raise ConfigError(f"--storage {url!r}: give sqlite:///FILE, postgresql://..., mysql://... or journal:FILE")
    kwargs: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        if heartbeat:
            kwargs = dict(heartbeat_interval=heartbeat, grace_period=2 * heartbeat)
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
                kwargs["heartbeat_stale_trial_callback"] = retry
            else:
                kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=3)
    with _creation_lock(url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(url, **kwargs)
            except Exception as exc:  # a bad URL or an unreachable database: SQLAlchemy raises many kinds
                racing = "already exists" in str(exc) or "UNIQUE constraint" in str(exc)
                if racing and attempt < 4:  # another worker is creating the tables right now
                    time.sleep(0.5 + attempt)
                    continue
                raise ConfigError(f"--storage {url!r} cannot be opened ({type(exc).__name__}: {exc})") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """For a SQLite file, hold an exclusive lock beside it while the storage creates its tables (workers that
    start together would otherwise race on the schema; should the lock fail, the retries in make_storage remain)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    path = Path(url[len("sqlite:///") :]).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        lock_file(handle, blocking=True)
        yield


def fail_stale_trials(study: Any) -> None:
    """Mark the trials whose heartbeat stopped (their worker was killed) failed; the retry callback queues them
    again."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def quiet_optuna() -> None:
    """Optuna's per-trial log lines off (eqprop prints its own), warnings kept."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def retried_from(trial: Any) -> int | None:
    """The number of the failed trial that ``trial`` retries (None for a first attempt)."""
    import optuna

    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():  # Optuna marks the retry helpers experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls.retried_trial_number(trial)


def run_tune(
    config: str | Path,
    space_path: str | Path,
    trials: int,
    out: str | Path,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str = "median",
    sampler_seed: int | None = None,
    overrides: Sequence[str] = (),
    heartbeat: int | None = 60,
    baseline: bool = False,
    startup_trials: int = 10,
    log: Callable[[str], None] = print,
    prune_every: int = 1,
) -> Any:
    """Work on the study until it has ``trials`` finished trials (counted over every worker sharing the storage);
    returns the Optuna study. With ``baseline`` the study's first trial (queued once, by whichever worker comes
    first) runs the config's own values of the searched keys. The TPE sampler draws at random until the study has
    ``startup_trials`` finished trials (Optuna's default 10; fewer lets a short search exploit sooner). The pruner
    looks at a trial every ``prune_every`` epochs (:func:`make_pruner`)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError('eqprop tune needs Optuna: pip install "eqprop[tune]"') from None
    from .trainer import DivergenceError, Trainer

    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if startup_trials < 0:
        raise ConfigError(f"--startup-trials must be >= 0, got {startup_trials}")
    base = load_config(config, overrides)
    space = read_space(space_path, config, overrides)
    key = objective_key(base.validation)
    if key == "test_error":
        warnings.warn(
            "eqprop tune: the config holds out no validation split, so trials are ranked by test error; "
            "set validation=0.1 (say) to tune without looking at the test set"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage_url = storage or _local_storage(out)
    chosen_pruner = make_pruner(pruner, base.epochs, prune_every)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created": eqprop says what it starts
    try:
        study = optuna.create_study(
            study_name=study_name or Path(config).stem,
            storage=make_storage(storage_url, heartbeat),
            direction="minimize",
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=startup_trials),
            pruner=chosen_pruner,
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
    if baseline:
        params = baseline_params(space, base)
        with _creation_lock(storage_url):  # two workers starting together queue it once
            if not any(t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)):
                study.enqueue_trial(params, user_attrs={"baseline": True})
    budget_states = (
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
        optuna.trial.TrialState.RUNNING,
        optuna.trial.TrialState.WAITING,
    )

    def counted(trial: Any) -> bool:
        return trial.state in budget_states and not trial.user_attrs.get("surplus")

    def objective(trial: Any) -> float:
        ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and counted(t)]
        if len(ahead) >= trials:  # other workers took the last places while this one asked: not a trial of ours
            trial.set_user_attr("surplus", True)
            study.stop()
            raise optuna.TrialPruned("the study already has its trials")
        sampled = [_override(d.key, d.suggest(trial), base) for d in space]
        run_dir = out / study.study_name / f"trial_{trial.number:04d}"
        blind = ["evaluate_test=false"] if key == "val_error" else []  # a trial never reads the test set
        cfg = parse_overrides([*sampled, *blind, f"out_dir={run_dir}", "progress=false"], base)
        trial.set_user_attr("run_dir", str(run_dir))

        from .callbacks import Callback

        class Report(Callback):
            """Report each epoch's objective; a pruned trial stops before its next epoch, once the epoch just
            finished is in its run directory."""

            verdict: str | None = None

            def on_epoch_end(self, trainer: Any, epoch: int, row: dict[str, Any]) -> None:
                trial.report(row[key], epoch)
                self.verdict = f"pruned after epoch {epoch}" if trial.should_prune() else None

            def on_epoch_start(self, trainer: Any, epoch: int) -> None:
                if self.verdict:
                    raise optuna.TrialPruned(self.verdict)

        try:
            history = Trainer(cfg, log=lambda s: None, callbacks=[Report()]).fit()
        except DivergenceError as exc:  # one line, and the trial fails (NaN): it is not counted
            trial.set_user_attr("diverged", str(exc))
            log(f"eqprop tune: trial {trial.number} {trial.params} diverged: {str(exc).split(' (last good')[0]}")
            return float("nan")
        best = min(row[key] for row in history)
        what = " (baseline: the config's settings)" if trial.user_attrs.get("baseline") else ""
        log(f"eqprop tune: trial {trial.number}{what} {trial.params} -> best {key} {100 * best:.2f}% ({run_dir})")
        return best

    def enough(study: Any, trial: Any) -> None:
        if (
            sum(counted(t) and t.state != optuna.trial.TrialState.RUNNING for t in study.get_trials(deepcopy=False))
            >= trials
        ):
            study.stop()

    log(f"eqprop tune: {trials} trials of {[d.key for d in space]} minimising {key}, storage {storage_url}")
    fail_stale_trials(study)  # trials of killed workers: failed, and queued again to retry
    waiting = optuna.trial.TrialState.WAITING  # queued (a retry): still to run
    if sum(counted(t) and t.state != waiting for t in study.get_trials(deepcopy=False)) < trials:
        quiet = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # eqprop logs each trial's outcome in one line
        try:
            study.optimize(objective, n_trials=None, callbacks=[enough])
        finally:
            optuna.logging.set_verbosity(quiet)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if finished:
        best = study.best_trial
        where = best.user_attrs.get("run_dir")
        log(f"eqprop tune: best {key} {100 * (best.value or 0.0):.2f}% with {best.params} ({where})")
    return study


PRUNERS = ("median", "hyperband", "none")


def make_pruner(name: str, epochs: int, every: int = 1) -> Any:
    """The Optuna pruner ``name`` for trials of ``epochs`` epochs that looks at a trial only at every ``every``-th
    epoch (``every``, 2 ``every``, ...): no trial is stopped before it has trained ``every`` epochs, and an epoch
    between looks stops none. A regulariser such as random translations starts slow; a pruner that looks at every
    epoch stops it before it wins (docs/resistive.md). median: stop a trial whose error is above the median of the
    earlier trials' at that epoch (after 2 finished trials); hyperband: successive halving from ``every`` epochs up
    to ``epochs``; none: never stop one. A trial's last epoch is never cut."""
    import optuna

    if name not in PRUNERS:
        raise ConfigError(f"--pruner {name!r}: choose one of {list(PRUNERS)}")
    if every < 1:
        raise ConfigError(f"--prune-every must be >= 1, got {every}")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=every, interval_steps=every)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min(every, epochs), max_resource=epochs)
    return optuna.pruners.NopPruner()


def replay_pruner(curves: Sequence[dict[int, float]], name: str, epochs: int, every: int = 1) -> list[int | None]:
    """What pruner ``name`` (:func:`make_pruner`) would have done to trials with these objective curves (epoch ->
    value), run one after another in this order: per trial, the epoch it would have been stopped at, or None
    (it runs to the end). A finished search's records tell how much a pruner would have saved, and what it would
    have lost."""
    import optuna

    quiet = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.create_study(direction="minimize", pruner=make_pruner(name, epochs, every))
        stops: list[int | None] = []
        for curve in curves:
            trial, stop = study.ask(), None
            for epoch in sorted(curve):
                trial.report(curve[epoch], epoch)
                if epoch < epochs and trial.should_prune():  # a trial's last epoch is never cut
                    stop = epoch
                    break
            if stop is None:
                study.tell(trial, min(curve.values()))
            else:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            stops.append(stop)
    finally:
        optuna.logging.set_verbosity(quiet)
    return stops


def _finished(study: Any) -> list[Any]:
    """The study's finished trials with an objective (not a worker's surplus trial)."""
    import optuna

    complete = (optuna.trial.TrialState.COMPLETE,)
    return [
        t
        for t in study.get_trials(deepcopy=False, states=complete)
        if t.value is not None and not t.user_attrs.get("surplus")
    ]


def _existing_study(config: str | Path, out: str | Path, storage: str | None, study_name: str | None) -> Any:
    """The study of an earlier search (``--out`` or ``--storage``, ``--study-name``), loaded without starting
    anything; a clear error names what is missing."""
    import optuna

    out = Path(out)
    if storage is None:
        if not (out / "tune.db").exists():
            raise ConfigError(
                f"no study in {out}: {out / 'tune.db'} does not exist (give --out of the search, or --storage)"
            )
        storage = _local_storage(out)
    name = study_name or Path(config).stem
    try:
        return optuna.load_study(study_name=name, storage=make_storage(storage, heartbeat=None))
    except KeyError:
        raise ConfigError(f"the storage {storage} holds no study named {name!r} (give --study-name)") from None


def tune_status(
    config: str | Path, out: str | Path, storage: str | None = None, study_name: str | None = None
) -> list[dict[str, Any]]:
    """Every trial of a study, without starting anything (``eqprop tune CONFIG --status``): per trial its number,
    state (Optuna's: COMPLETE, RUNNING, FAIL, PRUNED, WAITING), parameters, objective (the best validation error;
    None before the trial finishes), epochs trained (as reported to the storage, else from its run directory), and
    whether it is the baseline or the retry of a killed worker's trial."""
    from .results import read_run

    study = _existing_study(config, out, storage, study_name)
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        # the epochs each trial reported to the storage, so that a study's storage copied to another machine
        # (without the run directories) tells them too; a run directory fills in a trial that reported none
        epochs = max(t.intermediate_values, default=0)
        run_dir = t.user_attrs.get("run_dir")
        if not epochs and run_dir and (Path(run_dir) / "config.json").exists():
            metrics = read_run(run_dir).metrics
            epochs = int(metrics[-1]["epoch"]) if metrics else 0
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "value": t.value,
                "epochs": epochs,
                "baseline": bool(t.user_attrs.get("baseline")),
                "retry_of": retried_from(t),
            }
        )
    return rows


def param_importances(
    config: str | Path,
    out: str | Path,
    storage: str | None = None,
    study_name: str | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """How much of the objective's variance over the finished trials each searched key explains (fANOVA,
    Hutter et al. 2014, through Optuna's evaluator; the values sum to 1). Empty with fewer than 3 finished
    trials or when no key took different values: there is nothing to apportion. A rough guide with
    few trials, not a measurement: say which trials gave it."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    study = _existing_study(config, out, storage, study_name)
    done = _finished(study)
    varied = [
        k for k in dict.fromkeys(k for t in done for k in t.params) if len({repr(t.params.get(k)) for t in done}) > 1
    ]
    if len(done) < 3 or not varied:
        return {}
    importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed), params=varied)
    return {k: float(v) for k, v in importances.items()}


def write_best_config(
    config: str | Path,
    out: str | Path,
    path: str | Path,
    storage: str | None = None,
    study_name: str | None = None,
    trial: int | None = None,
) -> Path:
    """Write the config of a search's best finished trial (or of trial number ``trial``) for its final runs: the
    search's config as ``base``, the trial's values of the searched keys, the whole training set (validation 0) and
    the test set read once, after the last epoch (``test_once``). Other keys (epochs, seed) are the searcher's to
    override. Returns the file written."""

    study = _existing_study(config, out, storage, study_name)
    done = _finished(study)
    if trial is None:
        if not done:
            raise ConfigError(f"the study {study.study_name!r} has no finished trial yet: no best setting to write")
        chosen = min(done, key=lambda t: cast(float, t.value))
    else:
        found = [t for t in done if t.number == trial]
        if not found:
            numbers = [t.number for t in done]
            raise ConfigError(f"--trial {trial}: not a finished trial of {study.study_name!r} (finished: {numbers})")
        chosen = found[0]
    base = load_config(config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(Path(config).resolve(), path.parent.resolve())
    what = "validation error" if objective_key(base.validation) == "val_error" else "test error"
    where = chosen.user_attrs.get("run_dir", "its run directory unknown")
    lines = [
        f"# Trial {chosen.number} of the search {study.study_name!r} ({what} {100 * cast(float, chosen.value):.2f}%, "
        f"{where}), written by eqprop tune --best-config",
        "# for its final runs: the whole training set, the test set read once after the last epoch.",
        f"base: {relative}",
    ]
    for key, value in chosen.params.items():
        assignment = _override(key, value, base)
        lines.append(f"{key}: {assignment.split('=', 1)[1]}")
    lines += ["validation: 0.0", "test_once: true"]
    path.write_text("\n".join(lines) + "\n")
    load_config(path)  # the file must be a valid config
    return path


def plot_trials(
    config: str | Path, out: str | Path, path: str | Path, storage: str | None = None, study_name: str | None = None
) -> Path:
    """PNG of the objective (an error rate, in %) against each searched key over the finished trials: one panel per
    key, a log axis for a log-scale key, the best trial ringed and the baseline boxed; what a search tried and where
    its good trials lie. Returns the file written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    from .results import _save

    study = _existing_study(config, out, storage, study_name)
    done = _finished(study)
    if not done:
        raise ConfigError(f"the study {study.study_name!r} has no finished trial yet: nothing to plot")
    keys = list(dict.fromkeys(k for t in done for k in t.params))
    best = min(done, key=lambda t: cast(float, t.value))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), sharey=True, squeeze=False)
    for ax, key in zip(axes[0], keys):
        trials = [t for t in done if key in t.params]
        dist = trials[0].distributions[key]
        labels = [str(c) for c in dist.choices] if hasattr(dist, "choices") else None
        xs = [labels.index(str(t.params[key])) if labels else t.params[key] for t in trials]
        ys = [100 * cast(float, t.value) for t in trials]
        ax.scatter(xs, ys, s=18, color="C0")
        for x, y, t in zip(xs, ys, trials):
            if t.number == best.number:
                ax.scatter([x], [y], s=70, facecolors="none", edgecolors="C3")
            if t.user_attrs.get("baseline"):
                ax.scatter([x], [y], s=70, marker="s", facecolors="none", edgecolors="C2")
        if labels:
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif getattr(dist, "log", False):
            ax.set_xscale("log")  # labels at 1, 2, 3, 5, 7 times each power of ten: a range inside a decade has some
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        if isinstance(dist, optuna.distributions.IntDistribution):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("objective: error (%)")
    fig.suptitle(f"{study.study_name}: {len(done)} finished trials (ring: best; square: baseline)", fontsize=9)
    return _save(fig, path)
