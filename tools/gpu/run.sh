#!/usr/bin/env bash
# The GPU training benchmark in one `device` call: tools/gpu/run.sh lora|qlora (after tools/gpu/prepare.sh).
#   device run, carry [".gpu"], timeout_s 600: bash tools/gpu/run.sh lora     (then qlora on the warm machine)
# Each column is setup/benchmark_train.py's own process on the same random Phi-3-mini (built once, 7.2 GB);
# JSON and logs go to $OUT. TINY=1 runs the same commands on the tiny model with this machine's Python (a
# check of this script, not a figure).
set -uo pipefail
cd "$(dirname "$0")/../.."
method=${1:?usage: tools/gpu/run.sh lora|qlora}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export OLIVE_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
cpu=""
if [ -n "${TINY:-}" ]; then
    PY=${PY:-$PWD/.venv/bin/python}; size=(--tiny); cpu=",use_cpu=true"  # the Trainer refuses bf16 on a CPU without it
else
    PY=python3; size=(--model-dir /tmp/phi3-mini-random)
    export PYTHONPATH=/tmp/site  # first on sys.path: the pinned wheels win over the image's packages
    if [ ! -f /tmp/site/.installed ]; then  # a warm machine keeps them from the first call
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .gpu/whl/*.whl && touch /tmp/site/.installed || exit 1
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fi
"$PY" -c "import torch, transformers, peft, olive, datasets; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'olive', olive.__version__, 'datasets', datasets.__version__)" \
    | tee "$OUT/versions.txt" || exit 1
b=per_device_train_batch_size; ckpt=gradient_checkpointing
if [ "$method" = lora ]; then
    compare=(--compare seed --compare "b4:$b=4,$ckpt=false" --compare "b8ckpt:$b=8"
             --compare "b4bf16:$b=4,$ckpt=false,bf16=true$cpu" --compare "b4compile:$b=4,$ckpt=false,torch_compile=true")
else
    compare=(--compare seed --compare "b4ckpt:$b=4" --compare "b8ckpt:$b=8")
fi
cd ".gpu/$method/project" || exit 1
"$PY" setup/benchmark_train.py "${size[@]}" "${compare[@]}" --json "$OUT/$method.json" 2>&1 | tee "$OUT/$method.log"
exit "${PIPESTATUS[0]}"
