#!/usr/bin/env bash
# Prepare the GPU training benchmark for one `device` call (no GPU needed here; see tools/gpu/run.sh).
# Bakes a LoRA and a QLoRA project with the default answers into .gpu/ and downloads, for the device image's
# Python 3.12, the wheels its image lacks.
# Everything lands in .gpu/ (git-ignored, under the device tool's 64 MiB limit: 54 MiB when written).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/whl
for method in lora qlora; do
    "$PY" -m cookiecutter --no-input --output-dir ".gpu/$method" . finetune_method="$method" check_environment=false \
        project_slug=project >/dev/null
done
# What the device image lacks (KINDS.md's package list): olive-ai, datasets, bitsandbytes and their requirements,
# each at the version this venv holds (the venv is installed from cookiecutter.json's _pins)
NAMES="olive-ai datasets bitsandbytes dill multiprocess pydantic pydantic_core annotated-types typing-inspection
opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions optuna alembic SQLAlchemy Mako colorlog
questionary prompt_toolkit wcwidth"
# liger-kernel is not in this venv (it needs Triton): its version comes from cookiecutter.json's _pins
LIGER=$("$PY" -c 'import json; print(json.load(open("cookiecutter.json"))["_pins"]["liger-kernel"])')
# shellcheck disable=SC2086
WHEELS=$("$PY" -c 'import sys; from importlib.metadata import version as v; print(" ".join(f"{n}=={v(n)}" for n in sys.argv[1:]))' $NAMES)
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl $WHEELS "liger-kernel==$LIGER"
du -sh .gpu
