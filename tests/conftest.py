import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when visionattn.kernels is imported:
# set it first, so the kernels run (slowly) on CPU tensors when there is no GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import toy_families  # noqa: E402  (tests/ is on sys.path: pytest's rootdir-relative conftest import)

import visionattn  # noqa: E402,F401

# Before collection: the shared tests parametrise over the registry, toys included.
toy_families.register()


# Optional dependencies the tests use when they are installed. With VISIONATTN_REQUIRE_EXTRAS=1 (CI sets it) a
# missing or broken one fails the run instead of skipping its tests: a broken mmcv build must not pass as skips.
EXTRAS = {
    "triton": "a CUDA build of torch brings it",
    "onnx": "pip install visionattn[onnx]",
    "onnxruntime": "pip install visionattn[onnx]",
    "mmengine": "bash tools/install.sh (the mm extra)",
    "mmcv.ops": "python tools/install_mmcv.py (mmcv 2.1.0 with compiled ops)",
    "mmdet": "bash tools/install.sh (the mm extra)",
    "mmseg": "bash tools/install.sh (the mm extra)",
    "natten": "pip install --no-build-isolation --no-deps natten (tools/install.sh does)",
}


def require_extras() -> bool:
    return os.environ.get("VISIONATTN_REQUIRE_EXTRAS", "0") not in ("", "0")


def pytest_configure(config):
    if not require_extras():
        return
    import importlib

    missing = []
    for module, how in EXTRAS.items():
        try:
            importlib.import_module(module)
        except Exception as e:  # a broken build fails at import with other errors than ImportError
            missing.append(f"{module} ({type(e).__name__}: {e}; install: {how})")
    if missing:
        raise pytest.UsageError("VISIONATTN_REQUIRE_EXTRAS=1 but these do not import:\n  " + "\n  ".join(missing))

    skip_on_missing = pytest.importorskip

    def importorskip_or_fail(modname, *args, **kwargs):
        try:
            return skip_on_missing(modname, *args, **kwargs)
        except pytest.skip.Exception as e:
            pytest.fail(f"VISIONATTN_REQUIRE_EXTRAS=1: {modname} is required here ({e.msg})", pytrace=False)

    pytest.importorskip = importorskip_or_fail


@pytest.fixture
def one_thread():
    """Model tests run torch on one thread: steadier on CI's 2 cores, and several test processes can share them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
