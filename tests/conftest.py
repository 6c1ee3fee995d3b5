import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when visionattn.kernels is imported:
# set it first, so the kernels run (slowly) on CPU tensors when there is no GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import visionattn  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
