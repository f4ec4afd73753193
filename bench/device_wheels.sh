#!/usr/bin/env bash
# The wheels a GPU machine without a package registry needs for `bench/device_check.sh`,
# downloaded here (where pip reaches a registry) into .whl/ (git-ignored) to travel with the
# checkout: the project's requirements that a CUDA image with torch, torchvision,
# transformers, pyarrow and pytest usually lacks (Dask, pycocotools, the serve page's
# Starlette stack) and their dependencies, as binary wheels for the target's Python.
#
#   bash bench/device_wheels.sh [PYTHON_VERSION, default 3.12]      # ~22 MB
#
# device_check.sh installs from .whl/ with --no-index when the folder is there; packages the
# image already has are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
mkdir -p .whl
python3 -m pip download -q --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl \
    "dask[distributed]>=2024.1" "pycocotools>=2.0.7" "starlette>=0.37" "uvicorn>=0.29" "python-multipart>=0.0.9"
du -sh .whl
