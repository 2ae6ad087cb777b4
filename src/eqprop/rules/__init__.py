"""Learning rules: the contrastive family (EP, CpL, CL; for Hopfield and predictive-coding networks), the backprop
baselines (TBP, RBP, BPTT, PC-BP), Hamiltonian echo learning (RHEL) and intermediate learning signals."""

# importing registers: this order is the registries' listing order
# isort: off
from .contrastive import Contrastive
from .backprop import BackpropThroughTime, RecurrentBackprop, TruncatedBackprop, implicit_gradient
from .holomorphic import HolomorphicEP
from .predictive_coding import PCBackprop
from .echo_learning import EchoLearning, SequenceBPTT, bptt_gradients, echo, rhel_gradients

# isort: on
from .base import (
    ALGORITHMS,
    LearningAlgorithm,
    RelaxingAlgorithm,
    StepResult,
    algorithm_models,
    get_algorithm,
    register_algorithm,
)
from .contrast import SCHEMES, Scheme, contrast
from .phases import Phases
from .signals import KnowledgeDistillation, LocalError, WeightedKnowledgeDistillation, kappa_schedule

__all__ = [
    "ALGORITHMS",
    "LearningAlgorithm",
    "RelaxingAlgorithm",
    "StepResult",
    "algorithm_models",
    "get_algorithm",
    "register_algorithm",
    "SCHEMES",
    "Scheme",
    "contrast",
    "Contrastive",
    "HolomorphicEP",
    "BackpropThroughTime",
    "RecurrentBackprop",
    "TruncatedBackprop",
    "implicit_gradient",
    "PCBackprop",
    "EchoLearning",
    "SequenceBPTT",
    "bptt_gradients",
    "echo",
    "rhel_gradients",
    "Phases",
    "KnowledgeDistillation",
    "LocalError",
    "WeightedKnowledgeDistillation",
    "kappa_schedule",
]
