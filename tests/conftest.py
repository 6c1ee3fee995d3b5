import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when visionattn.kernels is imported:
# set it first, so the kernels run (slowly) on CPU tensors when there is no GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import visionattn  # noqa: E402,F401
import toy_families  # noqa: E402  (tests/ is on sys.path: pytest's rootdir-relative conftest import)

# Before collection: the shared tests parametrise over the registry, toys included.
toy_families.register()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
