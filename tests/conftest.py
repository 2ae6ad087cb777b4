import pytest
import torch

from eqprop.training.data import load_digits

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(image_size=8).normalized("train", flatten=True).tensors
    return x[:256], y[:256]
