"""The phases of a learning step (appendix D): a free phase of T iterations from the initial state, then nudged
phases of K iterations from the free state, each run by a relaxation solver.

:class:`Phases` is the one object a relaxing learning rule holds besides its cost and nudging values. Which
solver runs a phase follows from the settings: the nudged phases run in the parameters' precision
(``nudged_precision="full"``) or in deviation mode around the free state (``"deviation"``), a refinement of
a 16-bit free state runs in deviation mode, and ``cuda_graphs`` replays captured graphs on GPUs.

Initial state of the free phase (``init``): zeros, uniform in [0, 1], or ``"persistent"``: while the model is
in training mode, each free phase starts from the last state the previous training step relaxed to (its last
nudged phase), as the comparative study's public code does; the first step, a batch of another size and
evaluation (``model.eval()``) start from zeros. The carried state (``Phases.carried``) is part of the rule's
``state_dict``, so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.nudging import Nudge
from ..core.relaxation import (
    SCHEDULES,
    SOLVER_REFERENCES,
    SOLVERS,
    GraphedSolver,
    RelaxResult,
    Solver,
    SolverSettings,
    get_solver,
    resolve_dtype,
)
from ..settings import Section, check_choice, setting

__all__ = ["Phases", "NUDGED_PRECISIONS", "INITS", "RelaxSection"]

# Precision of the nudged phases: "same" as the free phase; "full": the parameters' precision; "deviation":
# states in the parameters' precision, convolutions of the deviation from the free state in ``dtype``.
NUDGED_PRECISIONS = ("same", "full", "deviation")
INITS = ("zeros", "uniform", "persistent")
_SETTINGS = ("schedule", "first", "tol", "dtype", "channels_last")


@dataclass(frozen=True)
class Phases:
    """Iteration counts (T, K), the solver and its settings, the initial state, and the precision options."""

    free_iterations: int = 60
    nudged_iterations: int = 15
    solver: str = "messages"
    settings: SolverSettings = field(default_factory=SolverSettings)
    init: str = "zeros"
    nudged_precision: str = "same"
    refine_iterations: int = 0
    cuda_graphs: bool = False
    nudged_schedule: str | None = None  # the nudged phases' and TBP's schedule; None: settings.schedule
    eval_iterations: int | None = None  # T of a model in eval mode (val/test predictions); None: free_iterations
    carried: list[Tensor] = field(default_factory=list, compare=False, repr=False)  # init="persistent": s_1..s_L

    def __post_init__(self) -> None:
        if self.free_iterations < 1 or self.nudged_iterations < 1:
            raise ValueError(f"iteration counts must be >= 1, got T={self.free_iterations}, K={self.nudged_iterations}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; valid solvers are {sorted(SOLVERS)}")
        if self.init not in INITS:
            raise ValueError(f"unknown initial state mode {self.init!r}; valid modes are {sorted(INITS)}")
        if self.nudged_precision not in NUDGED_PRECISIONS:
            raise ValueError(
                f"unknown nudged_precision {self.nudged_precision!r}; valid values are {list(NUDGED_PRECISIONS)}"
            )
        if self.nudged_schedule is not None and self.nudged_schedule not in SCHEDULES:
            raise ValueError(
                f"unknown nudged_schedule {self.nudged_schedule!r}; valid schedules are {list(SCHEDULES)} or None"
            )
        if self.refine_iterations < 0:
            raise ValueError(f"refine_iterations must be >= 0, got {self.refine_iterations}")
        if self.eval_iterations is not None and self.eval_iterations < 1:
            raise ValueError(f"eval_iterations must be >= 1 (or None: free_iterations), got {self.eval_iterations}")
        if (self.nudged_precision == "deviation" or self.refine_iterations) and self.solver != "messages":
            raise ValueError(
                f"deviation-mode nudged phases and refinement need the messages solver, not {self.solver!r}"
            )

    @classmethod
    def option_names(cls) -> set[str]:
        """The flat keywords :meth:`from_options` takes."""
        return set(_SETTINGS) | {f.name for f in fields(cls)} - {"solver", "settings"} | {"solver", "engine"}

    @classmethod
    def from_options(cls, solver: str = "messages", engine: str = "messages", **options: Any) -> Phases:
        """Phases from flat keywords: the :class:`SolverSettings` fields, the fields of this class, and
        ``engine="autograd"`` for the autograd reference of ``solver``."""
        if engine not in ("messages", "autograd"):
            raise ValueError(f"unknown engine {engine!r}; valid engines are ['autograd', 'messages']")
        if engine == "autograd":
            solver = SOLVER_REFERENCES.get(solver, solver)
        valid = set(_SETTINGS) | {f.name for f in fields(cls)} - {"solver", "settings"}
        unknown = sorted(set(options) - valid)
        if unknown:
            raise TypeError(
                f"unknown option(s) {unknown} for this rule; its phase options are {sorted(valid)} "
                "plus solver and engine"
            )
        settings = SolverSettings(**{k: options.pop(k) for k in _SETTINGS if k in options})
        return cls(solver=solver, settings=settings, **options)

    def solver_for(self, phase: str = "free") -> Solver:
        """The solver of a phase: "free", "nudged" or "refine" (module docstring)."""
        name, settings = self.solver, self.settings
        if phase == "nudged" and self.nudged_schedule is not None:
            settings = replace(settings, schedule=self.nudged_schedule)
        if phase == "refine" or (phase == "nudged" and self.nudged_precision == "deviation"):
            name = "deviation"
        elif phase == "nudged" and self.nudged_precision == "full":
            settings = replace(settings, dtype=None)
        solver = get_solver(name, settings)
        return GraphedSolver(settings, inner=solver) if self.cuda_graphs else solver

    def iterations_for(self, model: Any) -> int:
        """T of the free phase: ``eval_iterations`` for a model in eval mode (its predictions on the validation and
        test sets) where set, else ``free_iterations``."""
        if model.training or self.eval_iterations is None:
            return self.free_iterations
        return self.eval_iterations

    @property
    def _start(self) -> str:
        """The initial state mode when no carried state applies (a persistent init starts from zeros)."""
        return "zeros" if self.init == "persistent" else self.init

    def _persists(self, model: Any) -> bool:
        """Whether this phase carries its state to the next step: ``init="persistent"``, a model in training mode
        whose free phase is a relaxation (not an exact forward pass)."""
        return self.init == "persistent" and model.training and not getattr(model, "exact_free_phase", False)

    def carry(self, model: Any, states: list[Tensor]) -> None:
        """Remember ``states`` as the next training step's initial state (``init="persistent"``; else a no-op)."""
        if self._persists(model) and not states[-1].is_complex():
            self.carried[:] = [s.detach().clone() for s in states[1:]]

    def initial_state(self, model: Any, x: Tensor) -> list[Tensor]:
        """The free phase's initial state [x, s_1..s_L]: the carried state when it fits ``x`` (persistent
        init, training mode), else the model's ``init_state`` (zeros for a persistent init without one)."""
        carried = self.carried if self._persists(model) else []
        if carried and carried[0].shape[0] == x.shape[0] and carried[0].device == x.device:
            return [x] + list(carried)
        return model.init_state(x, self._start)

    def free(self, model: Any, x: Tensor) -> RelaxResult:
        """The free phase (no nudging): the model's free equilibrium, refined in deviation mode if asked."""
        with torch.no_grad():
            if self._persists(model):
                free = self.solver_for("free")(model, self.initial_state(model, x), self.free_iterations)
            else:
                free = model.free_phase(x, self.solver_for("free"), self.iterations_for(model), self._start)
            if self.refine_iterations:
                refined = self.solver_for("refine")(model, [x] + list(free.states[1:]), self.refine_iterations)
                free = RelaxResult(refined.states, free.iterations + refined.iterations, free.trajectory, refined.stats)
            self.carry(model, free.states)
            return free

    def nudged(self, model: Any, states: list[Tensor], nudge: Nudge) -> RelaxResult:
        """A nudged phase of K iterations from ``states`` (the free state); with ``init="persistent"`` its
        result is what the next training step starts from."""
        with torch.no_grad():
            result = self.solver_for("nudged")(model, list(states), self.nudged_iterations, nudge)
            self.carry(model, result.states)
            return result

    def unrolled(self, model: Any, states: list[Tensor], iterations: int, phase: str = "free") -> RelaxResult:
        """``iterations`` with autograd on, by the free-phase solver (BPTT) or, ``phase="nudged"``, with the
        training phases' schedule (truncated backprop's K iterations from the free state)."""
        solver = self.solver_for("free")
        if phase == "nudged" and self.nudged_schedule is not None:
            solver = solver.with_settings(schedule=self.nudged_schedule)
        with torch.enable_grad():
            return solver(model, states, iterations)

    def describe(self) -> str:
        s = self.settings
        order = f" ({s.first} first)" if s.schedule == "asynchronous" and s.first != "even" else ""
        if self.nudged_schedule is not None and self.nudged_schedule != s.schedule:
            order += f", nudged_schedule={self.nudged_schedule}"
        start = f", init={self.init}" if self.init != "zeros" else ""
        t_eval = f" (eval {self.eval_iterations})" if self.eval_iterations is not None else ""
        return (
            f"T={self.free_iterations}{t_eval}, K={self.nudged_iterations}, solver={self.solver}, "
            f"schedule={s.schedule}{order}, dtype={s.dtype}{start}"
        )


# ---- config section ----------------------------------------------------------------------------------------
@dataclass
class RelaxSection(Section):
    """The ``relax`` section: the phases' iteration counts, the solver and its settings, precision and speed."""

    name: ClassVar[str] = "relax"
    free_iterations: int = setting(20, "T: iterations of the free phase")
    nudged_iterations: int = setting(
        8, "K: iterations of each nudged phase (TBP: the truncation; RBP almeida-pineda: its steps)"
    )
    solver: str | None = setting(None, "relaxation solver (SOLVERS); null: the model's default")
    schedule: str = setting(
        "asynchronous",
        "asynchronous (even/odd layers, eqs. 100-101), synchronous (eq. 99), forward or backward (layer by layer)",
    )
    nudged_schedule: str | None = setting(
        None, "the schedule of the nudged phases and of TBP's K iterations (training); null: schedule"
    )
    first: str = setting("even", "asynchronous: which parity of layers is updated first (the paper: even)")
    dtype: str = setting("float32", "precision of the states and weight casts in the relaxation")
    nudged_precision: str = setting("same", "nudged phases: same (as dtype), full (float32), deviation (16-bit d)")
    eval_iterations: int | None = setting(
        None, "T at evaluation (validation and test predictions, from the start state); null: free_iterations"
    )
    refine_iterations: int = setting(0, "deviation-mode iterations refining a 16-bit free state")
    tol: float | None = setting(None, "stop a phase once no state unit moves more than this in an iteration")
    init: str = setting("zeros", "free phase start: zeros, uniform, or persistent (the last training step's state)")
    cuda_graphs: bool = setting(False, "replay each phase as a captured CUDA graph")
    channels_last: bool = setting(False, "channels-last states and conv weights (faster cuDNN)")
    fused_kernels: bool = setting(False, "torch.compile'd pooling and layer-update kernels on CUDA")
    cudnn_benchmark: bool = setting(True, "on CUDA: cuDNN times its convolution algorithms per shape")

    def validate(self) -> None:
        from ..core.relaxation import DTYPES, SCHEDULES

        if self.solver is not None:
            self.solver = check_choice("solver", self.solver, sorted(SOLVERS))
        self.schedule = check_choice("schedule", self.schedule, list(SCHEDULES))
        if self.nudged_schedule is not None:
            self.nudged_schedule = check_choice("nudged_schedule", self.nudged_schedule, list(SCHEDULES))
        self.first = check_choice("first", self.first, ["even", "odd"])
        self.dtype = check_choice("dtype", self.dtype, sorted(DTYPES))
        self.nudged_precision = check_choice("nudged_precision", self.nudged_precision, list(NUDGED_PRECISIONS))
        self.init = check_choice("init", self.init, list(INITS))
        self.at_least(1, "free_iterations", "nudged_iterations")
        self.at_least(0, "refine_iterations")
        self.at_least(1, "eval_iterations")
        self.positive("tol")

    def phases(self, default_solver: str) -> Phases:
        """The :class:`Phases` these settings describe (``default_solver`` where ``solver`` is null)."""
        dtype = None if self.dtype == "float32" else resolve_dtype(self.dtype)
        settings = SolverSettings(self.schedule, self.first, self.tol, dtype, self.channels_last)
        return Phases(
            self.free_iterations,
            self.nudged_iterations,
            self.solver or default_solver,
            settings,
            self.init,
            self.nudged_precision,
            self.refine_iterations,
            self.cuda_graphs,
            self.nudged_schedule,
            self.eval_iterations,
        )
