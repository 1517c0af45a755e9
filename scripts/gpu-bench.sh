#!/usr/bin/env bash
# The speed checks that need a GPU, in one go of about 8 minutes at most: the early exit on the
# LLaVA-1.5-7b and Qwen3-VL-4B shapes (random bf16 weights) at batch 1 and 16, the image caches
# on both shapes, extraction against plain generate, and the server under load.
#   bash scripts/gpu-bench.sh [OUT]      # default runs/gpu; from the repository root
# It runs $PYTHON (default python3: a machine's own CUDA torch) from src/, installing nothing but the
# wheels in .whl/ when there are any (scripts/gpu-wheels.sh), into /tmp/superneurons-site. The
# server's bench needs a classifier of the embedded default at runs/default/classifier
# (`superneurons run --out runs/default`); without one it is skipped. Each step has a time
# limit of its own; one that fails or runs out is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu}}
py=${PYTHON:-python3}
mkdir -p "$out"
log="$out/gpu-bench.log"
header="# superneurons gpu-bench log"
if [ -e "$log" ] && [ "$(head -n 1 "$log")" != "$header" ]; then
    echo "error: $log exists and was not written by this script; give another OUT" >&2
    exit 2
fi
echo "$header" >"$log"
site=/tmp/superneurons-site
if compgen -G ".whl/*.whl" >/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl >>"$log" 2>&1 || { echo "installing .whl failed" | tee -a "$log"; exit 1; }
    export PYTHONPATH="$site:src"
else
    export PYTHONPATH=src
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

$py - >>"$log" 2>&1 <<'PY'
import torch, transformers
print("torch", torch.__version__, "| transformers", transformers.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PY

step() {  # step NAME SECONDS ARGS...: one bench, its output in the log
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s)" | tee -a "$log"
    local started=$SECONDS
    timeout "$limit" $py -m superneurons bench "$@" >>"$log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - started)) s" | tee -a "$log"
}

step early-exit 210 early-exit --device cuda --models llava-1.5-7b,qwen3-vl-4b \
    --batch-sizes 1,16 --repeats 5 --out "$out/early-exit.json"
step image-reuse-llava 50 image-reuse --device cuda --shape llava-1.5-7b --exit-layer 1 \
    --questions 6 --repeats 5 --out "$out/image-reuse-llava-1.5-7b.json"
step image-reuse-qwen 50 image-reuse --device cuda --shape qwen3-vl-4b --exit-layer 1 \
    --questions 6 --repeats 5 --out "$out/image-reuse-qwen3-vl-4b.json"
step extract 60 extract --device cuda --n 256 --batch-size 16 --repeats 3 \
    --out "$out/extract.json"
if [ -f runs/default/classifier/classifier.json ]; then
    step serve 120 serve --device cuda --classifier runs/default/classifier --requests 256 \
        --out "$out/serve.json"
else
    echo "== serve: skipped (no runs/default/classifier)" | tee -a "$log"
fi
ls -l "$out" | tee -a "$log"
