"""eqprop: energy-based learning (equilibrium propagation, coupled and contrastive learning) in PyTorch.

Layout: :mod:`eqprop.core` (state spaces, energy terms, the energy network, relaxation solvers, nudging),
:mod:`eqprop.models` (Hopfield/DCHN/VGG CRNN, predictive coding, Hamiltonian SSMs; the model registry),
:mod:`eqprop.rules` (the EP family, CpL, CL, backprop baselines, RHEL, intermediate signals; the rule registry),
:mod:`eqprop.training` (config, data, Trainer, studies, results) and :mod:`eqprop.cli`.
Names are imported on first use (PEP 562), so ``import eqprop`` and ``eqprop --help`` do not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import (
        ACTIVATIONS,
        INTERACTIONS,
        SOLVERS,
        Bias,
        ClampNudge,
        ConvPool,
        CrossEntropy,
        Dense,
        EnergyNetwork,
        EPNudge,
        HalfSquaredError,
        Interaction,
        Layer,
        RelaxResult,
        Solver,
        SolverSettings,
        SquaredError,
        Trajectory,
        get_cost,
        get_solver,
        one_hot,
        register_activation,
        register_interaction,
        register_solver,
        relax,
        set_fused_kernels,
    )
    from .errors import ConfigError, DataError, RunError
    from .logs import get_logger, set_verbosity, use_root_logging
    from .models import (
        MODELS,
        VGG_ARCHS,
        EnergyModel,
        HamiltonianSSM,
        HamiltonianUnit,
        LinearHRU,
        NonlinearHRU,
        PredictiveCodingNetwork,
        dchn,
        hopfield_mlp,
        leapfrog_step,
        pc_vgg,
        register_hru,
        register_model,
        vgg5,
        vgg10,
        vgg10_skip,
        vgg_crnn,
    )
    from .rules import (
        ALGORITHMS,
        BackpropThroughTime,
        Contrastive,
        EchoLearning,
        KnowledgeDistillation,
        LearningAlgorithm,
        LocalError,
        PCBackprop,
        Phases,
        RecurrentBackprop,
        SequenceBPTT,
        TruncatedBackprop,
        WeightedKnowledgeDistillation,
        bptt_gradients,
        echo,
        get_algorithm,
        kappa_schedule,
        register_algorithm,
        rhel_gradients,
    )
    from .rules.base import StepResult
    from .rules.predictive_coding import PCEquilibriumPropagation
    from .training.callbacks import Callback
    from .training.config import TrainConfig, load_config
    from .training.data import ImageData, load_dataset, register_dataset
    from .training.optim import make_optimizer, make_scheduler
    from .training.run_directory import seed_everything
    from .training.saved import export_model, load_model
    from .training.trainer import Trainer, evaluate, load_run

__version__ = "0.1.0"

from . import logs as _logs  # noqa: E402  (no torch; gives the ``eqprop`` logger its console handler)

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "ACTIVATIONS": ".core",
    "INTERACTIONS": ".core",
    "SOLVERS": ".core",
    "Bias": ".core",
    "ClampNudge": ".core",
    "ConvPool": ".core",
    "CrossEntropy": ".core",
    "Dense": ".core",
    "EnergyNetwork": ".core",
    "EPNudge": ".core",
    "HalfSquaredError": ".core",
    "Interaction": ".core",
    "Layer": ".core",
    "RelaxResult": ".core",
    "Solver": ".core",
    "SolverSettings": ".core",
    "SquaredError": ".core",
    "Trajectory": ".core",
    "get_cost": ".core",
    "get_solver": ".core",
    "one_hot": ".core",
    "register_activation": ".core",
    "register_interaction": ".core",
    "register_solver": ".core",
    "relax": ".core",
    "set_fused_kernels": ".core",
    "ConfigError": ".errors",
    "DataError": ".errors",
    "RunError": ".errors",
    "MODELS": ".models",
    "VGG_ARCHS": ".models",
    "EnergyModel": ".models",
    "HamiltonianSSM": ".models",
    "HamiltonianUnit": ".models",
    "LinearHRU": ".models",
    "NonlinearHRU": ".models",
    "PredictiveCodingNetwork": ".models",
    "dchn": ".models",
    "hopfield_mlp": ".models",
    "leapfrog_step": ".models",
    "pc_vgg": ".models",
    "register_hru": ".models",
    "register_model": ".models",
    "vgg5": ".models",
    "vgg10": ".models",
    "vgg10_skip": ".models",
    "vgg_crnn": ".models",
    "ALGORITHMS": ".rules",
    "BackpropThroughTime": ".rules",
    "Contrastive": ".rules",
    "EchoLearning": ".rules",
    "KnowledgeDistillation": ".rules",
    "LearningAlgorithm": ".rules",
    "LocalError": ".rules",
    "PCBackprop": ".rules",
    "Phases": ".rules",
    "RecurrentBackprop": ".rules",
    "SequenceBPTT": ".rules",
    "TruncatedBackprop": ".rules",
    "WeightedKnowledgeDistillation": ".rules",
    "bptt_gradients": ".rules",
    "echo": ".rules",
    "get_algorithm": ".rules",
    "kappa_schedule": ".rules",
    "register_algorithm": ".rules",
    "rhel_gradients": ".rules",
    "PCEquilibriumPropagation": ".rules.predictive_coding",
    "TrainConfig": ".training.config",
    "load_config": ".training.config",
    "ImageData": ".training.data",
    "load_dataset": ".training.data",
    "register_dataset": ".training.data",
    "make_optimizer": ".training.optim",
    "make_scheduler": ".training.optim",
    "StepResult": ".rules.base",
    "Trainer": ".training.trainer",
    "evaluate": ".training.trainer",
    "load_run": ".training.trainer",
    "Callback": ".training.callbacks",
    "load_model": ".training.saved",
    "export_model": ".training.saved",
    "seed_everything": ".training.run_directory",
    "get_logger": ".logs",
    "set_verbosity": ".logs",
    "use_root_logging": ".logs",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eqprop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
