#!/usr/bin/env bash
# Prepare the GPU training benchmark for one `device` call (no GPU needed here; see tools/gpu/run.sh).
# Bakes a LoRA and a QLoRA project with the default answers into .gpu/ and downloads, for the device image's
# Python 3.12, the wheels its image lacks (pinned to what setup/requirements.txt and this venv use).
# Everything lands in .gpu/ (git-ignored, under the device tool's 64 MiB limit: 54 MiB when written).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
rm -rf .gpu && mkdir -p .gpu/whl
for method in lora qlora; do
    "$PY" -m cookiecutter --no-input --output-dir ".gpu/$method" . finetune_method="$method" check_environment=false \
        project_slug=project >/dev/null
done
# olive-ai's and datasets' requirements the image does not hold (KINDS.md's package list), at this venv's versions
WHEELS="olive-ai==0.13.0 datasets==5.2.0 bitsandbytes==0.50.2 dill==0.4.1 multiprocess==0.70.19
pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
opentelemetry-api==1.44.0 opentelemetry-sdk==1.44.0 opentelemetry-semantic-conventions==0.65b0
optuna==5.0.0 alembic==1.20.1 SQLAlchemy==2.1.9 Mako==1.4.3 colorlog==6.12.0
questionary==2.1.1 prompt_toolkit==3.0.53 wcwidth==0.9.4"
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl $WHEELS
du -sh .gpu
