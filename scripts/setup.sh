#!/usr/bin/env bash
# Create .venv and install superneurons into it; safe to run again.
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --dev    # runtime + test tools
# torch: when the venv has no torch yet, install the CPU build (torch==2.13.0) so pip does not pull a
# multi-GB CUDA build; to use your own CUDA torch, install it into .venv first and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip 2>&1 | grep -v WARNING || true
if ! $py -c "import torch" 2>/dev/null; then
    $py -m pip install -q "torch==${SUPERNEURONS_TORCH:-2.13.0}" 2>&1 | grep -v WARNING || true
fi
$py -m pip install -q -e ".${extras}" 2>&1 | grep -v WARNING || true
$py -c "import superneurons, torch; print('superneurons', superneurons.__version__, '| torch', torch.__version__)"
