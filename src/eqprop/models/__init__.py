"""Model families: Hopfield networks (dense, DCHN, VGG CRNN), predictive-coding networks and Hamiltonian SSMs,
each registered for configs with :func:`register_model`."""

# importing registers: this order is the registries' listing order
# isort: off
from .hopfield import VGG_ARCHS, dchn, hopfield_mlp, vgg_crnn
from .predictive_coding import PredictiveCodingNetwork, pc_vgg, vgg5, vgg10, vgg10_skip
from .hamiltonian import HamiltonianSSM, HamiltonianUnit, LinearHRU, NonlinearHRU, leapfrog_step, register_hru

# isort: on
from .base import MODELS, EnergyModel, ModelSpec, build_model, model_names, model_spec, register_model

__all__ = [
    "MODELS",
    "EnergyModel",
    "ModelSpec",
    "build_model",
    "model_names",
    "model_spec",
    "register_model",
    "HamiltonianSSM",
    "HamiltonianUnit",
    "LinearHRU",
    "NonlinearHRU",
    "leapfrog_step",
    "register_hru",
    "VGG_ARCHS",
    "dchn",
    "hopfield_mlp",
    "vgg_crnn",
    "PredictiveCodingNetwork",
    "pc_vgg",
    "vgg5",
    "vgg10",
    "vgg10_skip",
]
