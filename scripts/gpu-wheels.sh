#!/usr/bin/env bash
# Wheels for a GPU machine that has torch but cannot reach PyPI (scripts/gpu-bench.sh installs
# them there): the versions of this checkout's .venv, so the GPU runs what the tests ran.
#   bash scripts/gpu-wheels.sh [PYTHON_VERSION]   # default 3.12; writes .whl/ (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=${1:-3.12}
# What superneurons imports beyond a CUDA torch image's usual set (numpy, pillow, scipy, ...):
# transformers and its tokenizers at the tested versions, the CLI's typer, the server's stack.
names="transformers tokenizers regex typer typing_extensions fastapi starlette pydantic
pydantic_core annotated_types typing_inspection opentelemetry_api uvicorn httptools"
pins=$(.venv/bin/python - $names <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
rm -rf .whl && mkdir .whl
platforms=""
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms="$platforms --platform ${tag}_x86_64"
done
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp $platforms -d .whl $pins 2>&1 | grep -v "^WARNING: Location" || true
ls .whl
du -sh .whl
