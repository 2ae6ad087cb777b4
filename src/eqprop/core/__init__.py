"""The core of energy-based learning: state spaces (layers), energy terms (interactions), the energy network,
relaxation solvers and nudging."""

from .interactions import INTERACTIONS, Bias, ConvPool, Dense, Interaction, register_interaction
from .kernels import set_fused_kernels
from .layers import ACTIVATIONS, Layer, register_activation
from .network import EnergyNetwork, State
from .nudging import (
    AugmentedNudge,
    ClampNudge,
    Cost,
    CrossEntropy,
    EPNudge,
    HalfSquaredError,
    Nudge,
    SquaredError,
    get_cost,
    one_hot,
)
from .relaxation import (
    SOLVERS,
    RelaxResult,
    Solver,
    SolverSettings,
    SolverStats,
    Trajectory,
    even_odd_groups,
    get_solver,
    register_solver,
    relax,
)

__all__ = [
    "INTERACTIONS",
    "Bias",
    "ConvPool",
    "Dense",
    "Interaction",
    "register_interaction",
    "set_fused_kernels",
    "ACTIVATIONS",
    "Layer",
    "register_activation",
    "EnergyNetwork",
    "State",
    "AugmentedNudge",
    "ClampNudge",
    "Cost",
    "CrossEntropy",
    "EPNudge",
    "Nudge",
    "SquaredError",
    "HalfSquaredError",
    "get_cost",
    "one_hot",
    "SOLVERS",
    "RelaxResult",
    "Solver",
    "SolverSettings",
    "SolverStats",
    "Trajectory",
    "even_odd_groups",
    "get_solver",
    "register_solver",
    "relax",
]
