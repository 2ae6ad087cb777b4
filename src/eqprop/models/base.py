"""The model interface and the model registry.

:class:`EnergyModel` writes down what the learning rules, the Trainer and :func:`~eqprop.training.trainer.evaluate`
need of a model. :func:`register_model` makes a model family available to configs (``model=NAME``), to the
algorithm/model compatibility check (a rule declares the *families* it trains) and to the Trainer, which reads
everything model-specific from the :class:`ModelSpec`: the builder, whether inputs are flattened, the default
relaxation solver.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

from torch import Tensor, nn

from ..core.relaxation import RelaxResult
from ..errors import ConfigError
from ..registry import canonical_name
from ..settings import Section, check_choice, setting

__all__ = [
    "BIAS_INITS",
    "model_output",
    "LayeredModel",
    "EnergyModel",
    "ModelSpec",
    "MODELS",
    "register_model",
    "model_spec",
    "model_names",
    "build_model",
    "ModelSection",
    "layer_gains",
]

BIAS_INITS = ("zeros", "uniform")


@runtime_checkable
class LayeredModel(Protocol):
    """A model with parameter groups per layer (what the optimiser needs)."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def layer_parameters(self) -> list[list[nn.Parameter]]: ...


@runtime_checkable
class EnergyModel(LayeredModel, Protocol):
    """What a model trained by this library provides (an ``nn.Module``).

    - ``layer_parameters()``: parameter groups, one per layer (the per-layer learning rates of Table 5);
    - ``num_classes`` and ``input_shape`` (per sample);
    - ``free_phase(x, solver, iterations, init)``: the free equilibrium as a :class:`RelaxResult` whose last
      state is the output (a Hopfield net relaxes; a PCN returns its forward pass);
    - ``energy_param_grads(states)``: dE/dtheta at fixed states (batch mean), in ``parameters()`` order.

    Optional: ``init_state(x, init)`` (the start of the relaxation, needed by BPTT), ``exact_free_phase``
    (True where the free phase is an exact equilibrium, so a beta = 0 phase need not be relaxed) and
    ``output(states)`` (the prediction read from the states; the last state by default, :func:`model_output`).
    """

    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def free_phase(self, x: Tensor, solver: Any, iterations: int, init: str = "zeros") -> RelaxResult: ...

    def energy_param_grads(self, states: list[Tensor]) -> list[Tensor]: ...


def model_output(model: Any, states: list[Tensor]) -> Tensor:
    """The prediction a model reads from its states: ``model.output(states)`` where it defines one (a readout),
    else the last state."""
    output = getattr(model, "output", None)
    return output(states) if callable(output) else states[-1]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model family member: ``builder(cfg, input_shape, num_classes)`` returns the model.

    ``family`` is what learning rules declare they train ("hopfield", "pcn", "hssm"); ``flat_input`` feeds
    images flattened; ``solver`` is the relaxation solver its rules use by default (None: no relaxation);
    ``blocks``: the model marks VGG block ends (``block_ends``), where KD signals attach. ``defaults``: the config
    values (flat keys) the model brings, which apply wherever the config does not set the key itself (learning
    rates, iteration counts, cost, ...); ``algorithms``: rules, by name, that train it besides those that declare
    its family; ``persistent_init``: its free phase is a relaxation that may start from the last training step's
    state (``init=persistent``)."""

    name: str
    builder: Callable[[Any, tuple[int, ...], int], nn.Module]
    family: str
    flat_input: bool = False
    solver: str | None = "messages"
    blocks: bool = False
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    algorithms: tuple[str, ...] = ()
    persistent_init: bool = False


MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    builder: Callable[[Any, tuple[int, ...], int], nn.Module],
    family: str,
    *,
    flat_input: bool = False,
    solver: str | None = "messages",
    blocks: bool = False,
    description: str = "",
    defaults: Mapping[str, Any] | None = None,
    algorithms: tuple[str, ...] = (),
    persistent_init: bool | None = None,
) -> ModelSpec:
    """Register a model under ``name`` (config ``model=name``); see :class:`ModelSpec` for the fields."""
    if persistent_init is None:  # Hopfield networks relax their free phase
        persistent_init = family == "hopfield"
    spec = ModelSpec(
        name,
        builder,
        family,
        flat_input,
        solver,
        blocks,
        description,
        dict(defaults or {}),
        tuple(algorithms),
        persistent_init,
    )
    MODELS[name] = spec
    return spec


def model_names(*families: str) -> list[str]:
    """The registered models, in registration order (of the given ``families`` only, when any is given)."""
    return [name for name, spec in MODELS.items() if not families or spec.family in families]


def model_spec(name: str) -> ModelSpec:
    """The spec of a registered model; an unknown name lists the valid ones."""
    canonical = canonical_name(name, MODELS)
    if canonical is None:
        raise ValueError(f"unknown model {name!r}; valid models are {model_names()}")
    return MODELS[canonical]


def build_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The model ``cfg.model`` names, built for inputs of ``input_shape`` (flattened if the model asks), its
    biases drawn as ``cfg.bias_init`` says (Hopfield networks)."""
    model = model_spec(cfg.model.kind).builder(cfg, input_shape, num_classes)
    if cfg.model.bias_init == "uniform":  # ModelSection.validate allows it for Hopfield networks only
        cast(Any, model).uniform_biases_(cfg.model.bias_scale)
    return model


def image_input(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Check that a model that needs images gets (C, H, W)."""
    if len(input_shape) != 3:
        raise ConfigError(f"model {name!r} needs image inputs (C, H, W), got shape {input_shape}")
    c, h, w = input_shape
    return c, h, w


def layer_gains(gains: float | Sequence[float], n: int, what: str = "gains") -> list[float]:
    """One initialisation gain per weight layer from a number or a list (one value: every layer), each finite and
    > 0; the models' shared reading of the ``gains`` key."""
    values = [float(gains)] * n if isinstance(gains, (int, float)) else [float(g) for g in gains]
    if len(values) == 1:
        values = values * n
    if len(values) != n or any(not (math.isfinite(g) and g > 0) for g in values):
        raise ValueError(f"{what}: expected {n} gains > 0 (one per weight layer), got {values}")
    return values


# ---- config section ----------------------------------------------------------------------------------------
@dataclass
class ModelSection(Section):
    """The ``model`` section: the registered model and the settings several families read (sizes, gains, the
    Hopfield nets' state space and pooling). A family's own keys live in its file's section (``dchn``, ``vgg``,
    ``pcn``, ``hssm``, ``resistive``); older configs that write them under ``model:`` still work."""

    name: ClassVar[str] = "model"
    kind: str = setting("dchn", "the registered model (MODELS): dchn, mlp, vgg, pcn, hssm")
    channels: list[int] = setting([32, 64, 64], "dchn/pcn: conv widths")
    hidden: list[int] = setting([256], "mlp/vgg/pcn: dense hidden widths; hssm: the unit sizes")
    gains: list[float] = setting([0.8, 0.8, 0.8, 0.8], "init gain per weight layer (eq. 102; one value: all)")
    activation: str = setting("hard_sigmoid", "Hopfield nets: the hidden layers' state space")
    readout: bool = setting(False, "Hopfield nets: classes read by a linear readout outside the dynamics")
    bias_init: str = setting("zeros", "Hopfield nets: biases start at zeros, or uniform U(+-bias_scale/sqrt(fan_in))")
    bias_scale: float = setting(0.5, "bias_init=uniform: the bound's scale (the comparative study's code: 0.5)")
    pooling: str = setting("max", "dchn/vgg: 2x2 pooling, max or softmax (holomorphic)")
    pool_temperature: float = setting(1.0, "dchn/vgg: the softmax pooling's temperature T")

    def validate(self) -> None:
        from ..core.interactions import POOLINGS
        from ..core.layers import ACTIVATIONS

        self.kind = check_choice("model", self.kind, model_names())
        self.activation = check_choice("activation", self.activation, sorted(ACTIVATIONS))
        self.pooling = check_choice("pooling", self.pooling, list(POOLINGS))
        self.bias_init = check_choice("bias_init", self.bias_init, list(BIAS_INITS))
        self.positive("bias_scale", "pool_temperature")
        if self.bias_init != "zeros" and MODELS[self.kind].family != "hopfield":
            raise ConfigError(
                f"config key 'bias_init={self.bias_init}' draws the biases of Hopfield networks "
                f"({model_names('hopfield')}); "
                f"model {self.kind!r} has its own bias init"
            )
        if min(self.channels, default=1) < 1 or min(self.hidden, default=1) < 1 or min(self.gains, default=1) <= 0:
            raise ConfigError(
                f"channels and hidden must be >= 1 and gains > 0; got channels={self.channels}, "
                f"hidden={self.hidden}, gains={self.gains}"
            )
