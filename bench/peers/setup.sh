#!/usr/bin/env bash
# Builds the peers' own virtualenv (bench/peers/.venv): anomalib 2.7 needs torch 2.14.1 / torchvision 0.29.1,
# newer than the torch 2.13.0 the project pins, so the peers never share the project's environment. linecam is
# installed into it without its dependencies (only its metric code and dataset reader are used there), so every
# peer is scored by the very code that scores linecam.
#
#   bash bench/peers/setup.sh            # ~5-10 min, several GB (PyPI's torch 2.14.1 is the CUDA build)
#   PEERS_VENV=/somewhere bash bench/peers/setup.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${PEERS_VENV:-$here/.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
# pip's notes about this machine's absent local mirrors are noise here; its errors still show and still fail.
pip_install() { "$venv/bin/pip" install --quiet "$@" 2>&1 | { grep -v 'is ignored: it is neither' || true; }; }
# The machine-wide constraints file may cap torch below what anomalib needs; the peers' venv sets its own pins.
export PIP_CONSTRAINT=""
pip_install "torch==2.14.1" "torchvision==0.29.1" "anomalib==2.7.0"
# What anomalib's Engine, export and OpenVINO inference need beyond its minimal install, and what linecam's
# metric code imports (linecam itself without its pinned torch).
pip_install "lightning>=2.2" "torchmetrics>=1.3" "openvino>=2025.0" "onnx>=1.16" "onnxscript>=0.2" \
    "scikit-learn>=1.4" "scipy>=1.15" "opencv-python-headless>=4.9" "pydantic>=2.6,<3" "PyYAML>=6" \
    "matplotlib>=3.8" "tqdm>=4.66"
pip_install --no-deps -e "$root"
"$venv/bin/python" - <<'PY'
import anomalib, torch, openvino
from anomalib.models import Draem, Ganomaly  # noqa: F401
import linecam.grdnet.evaluate  # noqa: F401
print(f"peers venv ready: anomalib {anomalib.__version__}, torch {torch.__version__}, openvino {openvino.__version__}")
PY
