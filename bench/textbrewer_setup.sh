#!/usr/bin/env bash
# TextBrewer 0.2.1.post1 in its own virtual environment, for the side-by-side step-cost benchmark.
#
# The environment sees the system's packages (--system-site-packages), so TextBrewer runs on exactly the torch
# and transformers that hf-kd uses (torch 2.13.0 CPU, transformers 5.24); TextBrewer's own requirements are
# numpy, torch>=1.1, tensorboard and tqdm, and only tensorboard (imported by textbrewer.distiller_utils for its
# SummaryWriter) is missing from the system. The constraint keeps pip from replacing torch with another build.
#
#     bash bench/textbrewer_setup.sh            # creates bench/.venv-textbrewer (gitignored)
#     bench/.venv-textbrewer/bin/python -c "import textbrewer; print(textbrewer.__version__)"
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=bench/.venv-textbrewer
TORCH_VERSION=$(python -c "import torch; print(torch.__version__.split('+')[0])")
python -m venv --system-site-packages "$VENV"
echo "torch==${TORCH_VERSION}" > "$VENV/constraints.txt"
"$VENV/bin/pip" install --quiet textbrewer==0.2.1.post1 -c "$VENV/constraints.txt"
"$VENV/bin/python" -c "import textbrewer, torch, transformers; print('textbrewer', textbrewer.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
