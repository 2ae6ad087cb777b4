"""Model families: Hopfield networks (dense, DCHN, VGG CRNN), predictive-coding networks, Hamiltonian SSMs, deep
resistive networks and a feedforward ReLU baseline, each registered for configs with :func:`register_model`."""

# importing registers: this order is the registries' listing order
# isort: off
from .hopfield import VGG_ARCHS, dchn, hopfield_mlp, vgg_crnn
from .predictive_coding import PredictiveCodingNetwork, pc_vgg, vgg5, vgg10, vgg10_skip
from .hamiltonian import HamiltonianSSM, HamiltonianUnit, LinearHRU, NonlinearHRU, leapfrog_step, register_hru
from .resistive import DeepResistiveNetwork, drn, drn_1h, drn_2h, drn_3h, drn_xl, drn_xs
from .feedforward import ReLUNetwork, relu_mlp
from .fitzhugh_nagumo import FHNNetwork, fhn

# isort: on
from .base import MODELS, EnergyModel, ModelSpec, build_model, model_names, model_spec, register_model

__all__ = [
    "FHNNetwork",
    "fhn",
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
    "DeepResistiveNetwork",
    "drn",
    "drn_xs",
    "drn_1h",
    "drn_2h",
    "drn_3h",
    "drn_xl",
    "ReLUNetwork",
    "relu_mlp",
]
