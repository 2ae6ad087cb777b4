"""eqprop: energy-based learning (equilibrium propagation, coupled and contrastive learning) in PyTorch.

Layout: :mod:`eqprop.core` (state spaces, energy terms, the energy network, relaxation solvers, nudging),
:mod:`eqprop.models` (Hopfield/DCHN/VGG CRNN, predictive coding, Hamiltonian SSMs; the model registry),
:mod:`eqprop.rules` (the EP family, CpL, CL, backprop baselines, RHEL, intermediate signals; the rule registry),
:mod:`eqprop.training` (config, data, Trainer, studies, results) and :mod:`eqprop.cli`.
"""

from .core import (ACTIVATIONS, INTERACTIONS, SOLVERS, Bias, ClampNudge, ConvPool, CrossEntropy, Dense,
                   EnergyNetwork, EPNudge, Interaction, Layer, RelaxResult, Solver, SolverSettings, SquaredError,
                   Trajectory, get_cost, get_solver, one_hot, register_activation, register_interaction,
                   register_solver, relax, set_fused_kernels)
from .errors import ConfigError, DataError
from .models import (MODELS, VGG_ARCHS, EnergyModel, HamiltonianSSM, HamiltonianUnit, LinearHRU, NonlinearHRU,
                     PredictiveCodingNetwork, dchn, hopfield_mlp, leapfrog_step, pc_vgg, register_hru, register_model,
                     vgg_crnn)
from .rules import (ALGORITHMS, BackpropThroughTime, Contrastive, EchoLearning, KnowledgeDistillation,
                    LearningAlgorithm, LocalError, PCBackprop, Phases, RecurrentBackprop, SequenceBPTT,
                    TruncatedBackprop, WeightedKnowledgeDistillation, bptt_gradients, echo, get_algorithm,
                    kappa_schedule, register_algorithm, rhel_gradients)
from .rules.predictive_coding import PCEquilibriumPropagation
from .training.config import TrainConfig, load_config
from .training.data import ImageData, load_dataset, register_dataset
from .training.optim import make_optimizer, make_scheduler

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "INTERACTIONS", "SOLVERS", "Bias", "ClampNudge", "ConvPool", "CrossEntropy", "Dense",
    "EnergyNetwork", "EPNudge", "Interaction", "Layer", "RelaxResult", "Solver", "SolverSettings", "SquaredError",
    "Trajectory", "get_cost", "get_solver", "one_hot", "register_activation", "register_interaction",
    "register_solver", "relax", "set_fused_kernels", "ConfigError", "DataError", "MODELS", "VGG_ARCHS",
    "EnergyModel", "HamiltonianSSM", "HamiltonianUnit", "LinearHRU", "NonlinearHRU", "PredictiveCodingNetwork",
    "dchn", "hopfield_mlp", "leapfrog_step", "pc_vgg", "register_hru", "register_model", "vgg_crnn", "ALGORITHMS",
    "BackpropThroughTime", "Contrastive", "EchoLearning", "KnowledgeDistillation", "LearningAlgorithm", "LocalError",
    "PCBackprop", "PCEquilibriumPropagation", "Phases", "RecurrentBackprop", "SequenceBPTT", "TruncatedBackprop",
    "WeightedKnowledgeDistillation", "bptt_gradients", "echo", "get_algorithm", "kappa_schedule",
    "register_algorithm", "rhel_gradients", "TrainConfig", "load_config", "ImageData", "load_dataset",
    "register_dataset", "make_optimizer", "make_scheduler",
]
