import os
import tempfile

import pytest
import torch

from eqprop.training.data import load_digits

# 2 threads on the 2-core CI machine; EQPROP_TEST_THREADS=1 while a training run holds the other core (two
# threads then fight for one core and the suite runs about 4x slower)
torch.set_num_threads(int(os.environ.get("EQPROP_TEST_THREADS", "2")))
# one cache for the session and the runs it starts (the digits' split: no scikit-learn import per run), never the
# user's own
os.environ["EQPROP_CACHE_DIR"] = tempfile.mkdtemp(prefix="eqprop-test-cache-")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(image_size=8).normalized("train", flatten=True).tensors
    return x[:256], y[:256]
