"""eqprop: energy-based learning (equilibrium propagation, coupled and contrastive learning) in PyTorch."""

from .algorithms import (ALGORITHMS, BackpropThroughTime, Contrastive, LearningAlgorithm, RecurrentBackprop,
                         TruncatedBackprop, get_algorithm, register_algorithm)
from .config import ConfigError, TrainConfig, load_config
from .data import ImageData, load_dataset, register_dataset
from .echo_learning import EchoLearning, SequenceBPTT, bptt_gradients, echo, rhel_gradients
from .hamiltonian import HamiltonianSSM, HamiltonianUnit, LinearHRU, NonlinearHRU, leapfrog_step, register_hru
from .interactions import INTERACTIONS, Bias, ConvPool, Dense, Interaction, register_interaction
from .kernels import set_fused_kernels
from .layers import ACTIVATIONS, Layer, register_activation
from .intermediate_signals import (KnowledgeDistillation, LocalError, WeightedKnowledgeDistillation,
                                   kappa_schedule)
from .models import VGG_ARCHS, dchn, hopfield_mlp, vgg_crnn
from .network import EnergyNetwork
from .nudging import ClampNudge, CrossEntropy, EPNudge, SquaredError, get_cost, one_hot
from .optim import make_optimizer, make_scheduler
from .predictive_coding import PCBackprop, PCEquilibriumPropagation, PredictiveCodingNetwork, pc_vgg
from .relaxation import RelaxResult, Trajectory, relax

__version__ = "0.1.0"

__all__ = [
    "KnowledgeDistillation", "LocalError", "WeightedKnowledgeDistillation", "kappa_schedule", "VGG_ARCHS",
    "vgg_crnn",
    "EchoLearning", "SequenceBPTT", "bptt_gradients", "echo", "rhel_gradients", "HamiltonianSSM",
    "HamiltonianUnit", "LinearHRU", "NonlinearHRU", "leapfrog_step", "register_hru",
    "ACTIVATIONS", "ALGORITHMS", "PCBackprop", "PCEquilibriumPropagation", "PredictiveCodingNetwork", "pc_vgg", "ConfigError", "ImageData", "TrainConfig", "load_config", "load_dataset",
    "register_dataset", "INTERACTIONS", "BackpropThroughTime", "Bias", "ClampNudge", "Contrastive",
    "ConvPool", "CrossEntropy", "Dense", "EPNudge", "EnergyNetwork", "Interaction", "Layer", "LearningAlgorithm",
    "RecurrentBackprop", "RelaxResult", "SquaredError", "Trajectory", "TruncatedBackprop", "dchn",
    "get_algorithm", "get_cost", "hopfield_mlp", "make_optimizer", "make_scheduler", "one_hot", "register_activation",
    "register_algorithm", "register_interaction", "relax", "set_fused_kernels",
]
