#!/usr/bin/env bash
# Install visionattn with every extra on a fresh machine (CPU is enough):
#   torch/timm/triton, the package (editable), onnx tools, natten (pure-Python build), and the
#   OpenMMLab stack: mmcv 2.1.0 with compiled ops (built once from source and cached, see
#   tools/install_mmcv.py), mmengine, mmdet 3.3, mmsegmentation 1.2.2.
# Re-running is cheap: installed packages and the cached mmcv wheel are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

echo "== [1/4] visionattn with dev and onnx extras"
$PY -m pip install -q -e ".[dev,onnx]"

echo "== [2/4] mmcv 2.1.0 with ops (cached wheel, or a ~15 min build on 2 cores)"
# `import mmcv` imports mmengine: install it first, or the check of the built wheel fails.
$PY -m pip install -q "mmengine==0.10.7"
$PY tools/install_mmcv.py

echo "== [3/4] mmdet, mmsegmentation"
# mmcv is already installed (2.1.0), so pip keeps it instead of building its source distribution.
$PY -m pip install -q -e ".[mm]"

echo "== [4/4] natten (optional neighborhood-attention backend; pure-Python build without CUDA)"
if ! $PY -c "import natten" 2>/dev/null; then
    # natten ships only a source distribution that imports torch at build time.
    # --no-deps: pip must not touch the installed torch.
    $PY -m pip install -q --no-build-isolation --no-deps natten || echo "natten did not install; its comparisons are skipped"
fi

$PY - <<'PYEOF'
import mmcv, mmdet, mmseg, timm, torch, visionattn
print(f"torch {torch.__version__}  timm {timm.__version__}  mmcv {mmcv.__version__}  "
      f"mmdet {mmdet.__version__}  mmseg {mmseg.__version__}  visionattn {visionattn.__version__}")
print("registered models:", ", ".join(visionattn.list_models(aliases=True)))
PYEOF
