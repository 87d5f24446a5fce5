#!/usr/bin/env bash
# Prepare the ONNX-on-CUDA check (tools/gpu/onnx-cuda.sh); no GPU needed here. Everything lands in .gpu-onnx/
# (git-ignored):
#   project/   a CUDA LoRA project with the default answers, holding its workflow's tiny model built for CUDA
#              by olive-ai and the pinned onnxruntime-genai (gen-model/cuda-tiny, tools/gpu/tiny_cuda_model.py)
#   parts/     the wheels of setup/requirements-onnx-cuda.txt that the device image lacks (onnxruntime-gpu and
#              onnxruntime-genai-cuda, for its Python 3.12), stored uncompressed in one tar, xz-compressed and
#              split into parts that each fit one `device` call (64 MiB with the working tree)
#   manifest   each part's sha256, in order
# WHEELS=DIR reuses wheels downloaded before; PART_MIB sets the part size. For a check of onnx-cuda.sh on a CPU
# (TINY=1 there): CPU_WHEELS=1 takes onnxruntime and onnxruntime-genai of the same versions, and PYTHON_VERSION
# this machine's Python.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$PWD/.venv/bin/python}
PART_MIB=${PART_MIB:-54}
rm -rf .gpu-onnx/project .gpu-onnx/parts .gpu-onnx/stored .gpu-onnx/manifest  # the downloaded wheels stay
mkdir -p .gpu-onnx/parts .gpu-onnx/stored
"$PY" -m cookiecutter --no-input --output-dir .gpu-onnx . check_environment=false project_slug=project >/dev/null
(cd .gpu-onnx/project && OLIVE_DISABLE_TELEMETRY=1 "$PY" ../../tools/gpu/tiny_cuda_model.py >../tiny.log 2>&1) ||
    { tail -30 .gpu-onnx/tiny.log; exit 1; }
# the versions the generated requirements-onnx-cuda.txt pins (cookiecutter.json's _pins and _onnx_cuda_pins)
mapfile -t PINS < <(grep -oE '^onnxruntime[a-z-]*(\[[a-z,]*\])?==[^ ]+' .gpu-onnx/project/setup/requirements-onnx-cuda.txt |
    sed -E 's/\[[a-z,]*\]//')
[ -n "${CPU_WHEELS:-}" ] && PINS=("${PINS[@]/onnxruntime-gpu==/onnxruntime==}") &&
    PINS=("${PINS[@]/onnxruntime-genai-cuda==/onnxruntime-genai==}")
PYTHON_VERSION=${PYTHON_VERSION:-3.12}; ABI=cp${PYTHON_VERSION/./}
WHEELS=${WHEELS:-.gpu-onnx/download}
mkdir -p "$WHEELS"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "${PINS[@]}"
# A wheel is a zip: rewritten without compression (same files, same RECORD) it is still the same wheel, and xz
# then shrinks the CUDA kernels far more than the wheel's own deflate did
for pin in "${PINS[@]}"; do
    name=${pin%%==*}; version=${pin##*==}
    wheel=$(ls "$WHEELS"/"${name//-/_}"-"$version"-"$ABI"-*.whl)
    rm -rf .gpu-onnx/unzip && mkdir .gpu-onnx/unzip && unzip -q "$wheel" -d .gpu-onnx/unzip
    (cd .gpu-onnx/unzip && zip -q -0 -r "../stored/$(basename "$wheel")" .)
done
rm -rf .gpu-onnx/unzip
tar -C .gpu-onnx/stored -cf - . | xz -9e -T0 | split -b "${PART_MIB}M" -d - .gpu-onnx/parts/part.
(cd .gpu-onnx/parts && sha256sum part.* >../manifest)
rm -rf .gpu-onnx/stored
du -sh .gpu-onnx/project .gpu-onnx/parts/*
echo "device calls: one per part, each within 30 s of the last (tools/gpu/onnx-cuda.sh says what to carry)"
