"""Learning rules: what every rule provides, and the registry the Trainer and the configs read.

A rule's ``step(model, x, labels)`` runs its phases and writes an estimate of dC/dtheta (the descent direction,
so ``optimizer.step()`` performs theta <- theta - eta * estimate) into ``p.grad`` of every parameter. A new rule
is one :class:`LearningAlgorithm` subclass implementing :meth:`~LearningAlgorithm.gradients` (and, where its
free phase is not the model's equilibrium, :meth:`~LearningAlgorithm.free_phase`), plus one
:func:`register_algorithm` call naming the model families it trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..core.nudging import Cost, cost_precision, get_cost, one_hot
from ..core.relaxation import RelaxResult
from ..errors import ConfigError
from ..models.base import model_output
from ..registry import canonical_name
from ..settings import Section, check_choice, setting
from .phases import Phases

__all__ = [
    "LearningAlgorithm",
    "RelaxingAlgorithm",
    "StepResult",
    "write_grads",
    "ALGORITHMS",
    "ALGORITHM_FAMILIES",
    "ALGORITHM_OPTIONS",
    "register_algorithm",
    "get_algorithm",
    "accepted_options",
    "algorithm_names",
    "algorithm_families",
    "algorithm_models",
    "algorithm_options",
    "trains",
    "RuleSection",
]


@dataclass
class StepResult:
    """What a training step measured at the free state."""

    loss: Tensor  # per-sample cost C(o_*, y)
    output: Tensor  # free output o_*
    free: RelaxResult
    grads: Sequence[Tensor | None]


def write_grads(model: torch.nn.Module, grads: Sequence[Tensor | None], accumulate: bool = False) -> None:
    """Write an estimate into ``p.grad`` (in ``model.parameters()`` order), in each parameter's dtype; with
    ``accumulate`` add it to what ``p.grad`` holds, as ``loss.backward()`` does (gradient accumulation)."""
    for p, g in zip(model.parameters(), grads):
        if accumulate and p.grad is not None:
            if g is not None:
                p.grad = p.grad + g.detach().to(p.dtype)
            continue
        p.grad = None if g is None else g.detach().to(p.dtype)


class LearningAlgorithm:
    """A learning rule: a cost and a way to estimate dC/dtheta. Subclasses implement ``gradients`` and
    ``free_phase`` (the prediction the output is read from)."""

    name = "algorithm"

    def __init__(self, cost: str | Cost = "squared_error") -> None:
        self.cost = get_cost(cost) if isinstance(cost, str) else cost

    def free_phase(self, model: Any, x: Tensor) -> RelaxResult:
        """The model's prediction for ``x``; its last state is the output."""
        raise NotImplementedError

    def check_model(self, model: Any) -> None:
        """Raise ValueError, saying what to change, if this rule cannot train ``model`` (checked at build time)."""

    def notes(self, model: Any) -> list[str]:
        """Settings that train ``model`` but are known to cost accuracy, each a line for the run's log; none by
        default."""
        return []

    def targets(self, model: Any, labels: Tensor) -> Tensor:
        """The one-hot targets y of integer labels, in the dtype of the model's parameters (a float64 model nudges
        with float64 targets)."""
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        return one_hot(labels, model.num_classes).to(labels.device, dtype if not dtype.is_complex else torch.float32)

    def gradients(self, model: Any, x: Tensor, y: Tensor, free: RelaxResult) -> list[Tensor | None]:
        """Estimate dC/dtheta given the free phase; ``y`` is the one-hot target."""
        raise NotImplementedError

    def step_counts(self) -> dict[str, float]:
        """Counts of the last step that the Trainer sums over each epoch into its metrics row (e.g. HEP's samples
        that fell back to the real phases); none by default."""
        return {}

    def step(self, model: Any, x: Tensor, labels: Tensor, accumulate: bool = False) -> StepResult:
        """Free phase + gradient estimate (a mean over the batch), written into ``p.grad`` of every parameter:
        replacing what is there (the default), or added to it with ``accumulate=True`` as ``backward()`` does."""
        scope = getattr(model, "learning_step", None)  # a model may share per-step constants between the phases
        with scope() if callable(scope) else contextlib.nullcontext():
            y = self.targets(model, labels)
            free = self.free_phase(model, x)
            grads = self.gradients(model, x, y, free)
        write_grads(model, grads, accumulate)
        o = cost_precision(model_output(model, free.states))
        return StepResult(self.cost(o, y).detach(), o.detach(), free, grads)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep of the rule besides the model (carried states, random draws); a rule
        without such state returns {}. Tensors whose first axis is the training batch go under ``"batch"``: with
        several ranks the Trainer stores the global batch and gives each rank its own rows back."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def __repr__(self) -> str:
        return f"{self.name}(cost={self.cost.name})"


class RelaxingAlgorithm(LearningAlgorithm):
    """A rule whose free phase is an energy minimisation run by :class:`~eqprop.rules.phases.Phases`.

    ``phases`` may be given whole, or built from flat keywords (``free_iterations``, ``nudged_iterations``,
    ``schedule``, ``dtype``, ``engine``, ... see :meth:`Phases.from_options`)."""

    default_solver = "messages"

    def __init__(
        self, *, cost: str | Cost = "squared_error", phases: Phases | None = None, **phase_options: Any
    ) -> None:
        super().__init__(cost)
        if phases is not None and phase_options:
            raise ValueError(f"give either phases or phase options, not both (got {sorted(phase_options)})")
        if phases is None:
            phase_options.setdefault("solver", self.default_solver)
            phases = Phases.from_options(**phase_options)
        self.phases = phases

    def free_phase(self, model: Any, x: Tensor) -> RelaxResult:
        return self.phases.free(model, x)

    def state_dict(self) -> dict[str, Any]:
        """The persistent init's carried state (batch-first tensors), if any."""
        return {"batch": list(self.phases.carried)} if self.phases.carried else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phases.carried[:] = list(state.get("batch", []))

    def __repr__(self) -> str:
        return f"{self.name}({self.phases.describe()}, cost={self.cost.name})"


# ---- registry ----------------------------------------------------------------------------------------------
ALGORITHMS: dict[str, Callable[..., LearningAlgorithm]] = {}
ALGORITHM_FAMILIES: dict[str, tuple[str, ...]] = {}  # the model families each rule trains
ALGORITHM_OPTIONS: dict[str, tuple[str, ...]] = {}  # the keywords the Trainer passes to each rule's factory


def register_algorithm(
    name: str,
    factory: Callable[..., LearningAlgorithm],
    families: tuple[str, ...] = ("hopfield",),
    options: tuple[str, ...] = ("cost", "phases"),
) -> None:
    """Register a learning algorithm factory under ``name`` (looked up case-insensitively, '-' ignored), with
    the model families it trains (see :func:`eqprop.models.register_model`) and the keywords the Trainer
    builds it with: ``cost``, ``phases``, ``beta``, ``seed``, and the keywords that config sections declare in
    their ``options`` (a rule's own settings, e.g. HEP's ``points``)."""
    ALGORITHMS[name] = factory
    ALGORITHM_FAMILIES[name] = tuple(families)
    ALGORITHM_OPTIONS[name] = tuple(options)


def algorithm_names() -> list[str]:
    return list(ALGORITHMS)


def _canonical(name: str) -> str:
    canonical = canonical_name(name, ALGORITHMS)
    if canonical is None:
        raise ValueError(f"unknown algorithm {name!r}; valid algorithms are {algorithm_names()}")
    return canonical


def accepted_options(name: str) -> set[str]:
    """The keywords rule ``name`` takes: its factory's own, and the phase options (solver settings, iteration
    counts) where it relaxes phases."""
    import inspect

    factory = ALGORITHMS[_canonical(name)]
    if isinstance(getattr(factory, "builds", None), type):  # a factory function that names the class it builds
        builds: type = factory.builds  # type: ignore[attr-defined]
        return _class_options(builds) - set(getattr(factory, "fixed", ()))
    if not isinstance(factory, type):  # a function: its signature (with **kwargs it takes anything)
        params = list(inspect.signature(factory).parameters.values())
        if any(p.kind == p.VAR_KEYWORD for p in params):
            return {"*"}
        return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return _class_options(factory)


def _class_options(factory: type) -> set[str]:
    """The keywords a rule class's constructor takes, following ``**kwargs`` up its bases."""
    import inspect

    from .phases import Phases

    names: set[str] = set()
    for cls in factory.__mro__:  # each __init__ passes its **kwargs on to the next one
        if "__init__" not in vars(cls) or cls is object:
            continue
        params = list(inspect.signature(vars(cls)["__init__"]).parameters.values())
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
        if cls is RelaxingAlgorithm:  # the rest become the phases' options
            names |= Phases.option_names()
            break
    return names


def get_algorithm(name: str, *, ignore_unknown: bool = False, **kwargs: Any) -> LearningAlgorithm:
    """Build an algorithm by name ("CEP", "C-EP", "ncpl", "TBP", ...); an unknown name lists the valid ones. A
    keyword the rule does not take is a TypeError that names it and the rule's options, for every rule alike;
    ``ignore_unknown=True`` drops such keywords instead, so one set of keywords can build every rule in a loop
    (``beta`` reaches the rules that nudge, not TBP)."""
    accepted = accepted_options(name)
    if "*" in accepted:
        return ALGORITHMS[_canonical(name)](**kwargs)
    unknown = sorted(set(kwargs) - accepted)
    if unknown and not ignore_unknown:
        raise TypeError(
            f"rule {_canonical(name)!r} takes no option(s) {unknown}; its options are {sorted(accepted)} (or pass "
            "ignore_unknown=True to drop the keywords a rule does not take)"
        )
    return ALGORITHMS[_canonical(name)](**{k: v for k, v in kwargs.items() if k in accepted})


def algorithm_options(name: str) -> tuple[str, ...]:
    """The keywords the Trainer passes to an algorithm's factory."""
    return ALGORITHM_OPTIONS[_canonical(name)]


def algorithm_families(name: str) -> tuple[str, ...]:
    """The model families an algorithm trains."""
    return ALGORITHM_FAMILIES[_canonical(name)]


def trains(name: str, model: str) -> bool:
    """Whether algorithm ``name`` trains the registered model ``model``: the rule declares the model's family, or
    the model names the rule among its ``algorithms``."""
    from ..models.base import model_spec

    spec, rule = model_spec(model), _canonical(name)
    return spec.family in ALGORITHM_FAMILIES[rule] or rule in {canonical_name(a, ALGORITHMS) for a in spec.algorithms}


def algorithm_models(name: str) -> tuple[str, ...]:
    """The registered models (config ``model`` values) an algorithm trains."""
    from ..models.base import model_names

    return tuple(m for m in model_names() if trains(name, m))


# ---- config section ----------------------------------------------------------------------------------------
@dataclass
class RuleSection(Section):
    """The ``rule`` section: the learning rule, its cost and nudging strength. A rule's own keys live in its file's
    section (``hep``, ``echo``, ``rbp``); older configs that write them under ``rule:`` still work."""

    name: ClassVar[str] = "rule"
    algorithm: str = setting(
        "CEP", "learning rule (ALGORITHMS): CL, PEP, NEP, CEP, HEP, PCpL, ..., TBP, RBP, RHEL, ..."
    )
    beta: float = setting(0.1, "nudging strength |beta|")
    cost: str = setting("squared_error", "cost C(o, y): squared_error, half_squared_error or cross_entropy")
    nudged_output: str = setting(
        "exact", "nudged phases: the output jumps to its exact minimiser, or iterates o <- sigma(m - beta dC/do)"
    )

    def validate(self) -> None:
        from ..core.nudging import COSTS, NUDGED_OUTPUTS

        self.algorithm = check_choice("algorithm", self.algorithm, algorithm_names())
        self.cost = check_choice("cost", self.cost, sorted(COSTS))
        self.nudged_output = check_choice("nudged_output", self.nudged_output, list(NUDGED_OUTPUTS))
        try:
            get_cost(self.cost, self.nudged_output).check_iterate(self.beta)
        except ValueError as exc:
            raise ConfigError(f"config key 'beta': {exc}") from None
        self.at_least(0, "beta")
