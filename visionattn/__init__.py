"""visionattn: efficient-attention vision backbones registered in timm.

``import visionattn`` registers every model with timm, so ``timm.create_model("biformer_s")`` works, and
declares each model family (``visionattn.list_families()``, ``visionattn.get_family(name)``).
"""

from . import kernels, models  # noqa: F401  (importing models registers them with timm)
from .models import families, get_family, list_models
from .pretrained import create_model


def list_families() -> list[str]:
    """Names of the registered model families."""
    return [f.name for f in families()]


__version__ = "0.1.0"
__all__ = ["kernels", "models", "create_model", "get_family", "list_families", "list_models", "__version__"]
