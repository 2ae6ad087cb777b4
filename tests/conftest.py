import os
import tempfile

import pytest
import torch

from eqprop.training.data import load_digits

# The suite runs as two pytest-xdist workers (pyproject's addopts), each on its own share of the cores: one thread
# each on the 2-core CI machine (most tests are too small to use two). With -n 0 one
# process takes 2 threads. EQPROP_TEST_THREADS overrides both, e.g. 1 with -n 0 while a training run holds a core.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
_default_threads = max(1, (os.cpu_count() or 2) // _workers) if _workers else 2
torch.set_num_threads(int(os.environ.get("EQPROP_TEST_THREADS", str(_default_threads))))
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
