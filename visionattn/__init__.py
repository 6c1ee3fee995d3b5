"""visionattn: efficient-attention vision backbones registered in timm.

``import visionattn`` registers every model with timm, so ``timm.create_model("biformer_s")`` works.
"""

from . import kernels, models  # noqa: F401  (importing models registers them with timm)
from .models import list_models

__version__ = "0.1.0"
__all__ = ["kernels", "models", "list_models", "__version__"]
