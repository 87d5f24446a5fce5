#!/usr/bin/env bash
# The GPU training benchmark in one `device` call (after tools/gpu/prepare.sh):
#   device run, carry [".gpu"], timeout_s 600: bash tools/gpu/run.sh [GROUP ...]
# Groups run in the order given, so a call cut short keeps what finished: each group is one
# setup/benchmark_train.py --compare run (every column its own process) whose JSON is rewritten after each column.
# Every column trains the same random Phi-3-mini (built once, 7.2 GB) at the config's seq 2048 with gradient
# accumulation 1 (tokens/s does not depend on it; it keeps the steps short). JSON and the log go to $OUT.
# TINY=1 runs the same columns on the tiny model with this machine's Python (a check of this script, not a figure).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export OLIVE_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ -n "${TINY:-}" ]; then
    PY=${PY:-$PWD/.venv/bin/python}; size=(--tiny)  # on a CPU the benchmark trains without bf16 and Liger
else
    PY=python3; size=(--model-dir /tmp/phi3-mini-random --warmup 2 --steps 4)
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
b=per_device_train_batch_size; ckpt=gradient_checkpointing; bf16="bf16=true"
# The projects are baked with the default gpu_memory, 16gb. Its LoRA profile is batch 1 with checkpointing, the
# settings of the 2026-11-28 LoRA `config` columns. Its QLoRA profile is batch 4 with checkpointing and bf16, so
# the QLoRA columns that stand for those runs' `config` (batch 1 with checkpointing) or that change only the
# batch say bf16=false themselves: each column then measures what its label and the recorded run say.
q1="$b=1,$ckpt=true,bf16=false"
# name method label:overrides ...  (config: the baked project's own settings; a group that does not name it runs
# it last, which in the second groups measures the run-to-run spread)
group() {
    local name=$1 method=$2; shift 2
    local compare=() item
    for item in "$@"; do compare+=(--compare "$item"); done
    echo "[gpu] $(date +%T) $name" | tee -a "$OUT/gpu.log"
    (cd ".gpu/$method/project" && "$PY" setup/benchmark_train.py "${size[@]}" --set gradient_accumulation_steps=1 \
        "${compare[@]}" --json "$OUT/$name.json") 2>&1 | tee -a "$OUT/gpu.log"
    [ "${PIPESTATUS[0]}" = 0 ] || failed+=("$name")
}
failed=()
# One column per gpu_memory profile of a method, each as LABEL:KEY=VALUE,... Read from the baked project: its
# project.json holds cookiecutter.json's _training_profiles, and its setup/env_checks.py names the settings a
# profile sets (PROFILE_DEFAULTS, by which check_env.py recognises a profile in a config)
profile_columns() {
    (cd ".gpu/$1/project/setup" && "$PY" - "$1" <<'PYTHON'
import json, sys
from env_checks import PROFILE_DEFAULTS
profiles = json.load(open("project.json", encoding="utf-8"))["training_profiles"][sys.argv[1]]
for name, profile in profiles.items():
    print(f"{name}:" + ",".join(f"{key}={json.dumps(profile[key])}" for key in PROFILE_DEFAULTS))
PYTHON
    )
}
# default: every profile beside the seed (LoRA) or QLoRA's batch 1 with checkpointing, side by side in one run per
# method, then candidates for a profile that reaches 1.7x the seed on an 80 GB card (the 40gb profile gave 1.65x:
# batch 8 with Liger, which may fit where b8bf16's 82.55 GiB did not; Liger with torch_compile), last so that a
# call cut short keeps the profiles; lora1 ... kernels are the groups of 2026-11-28's two calls
# (docs/gpu/2026-11-28-h200/)
all=(profiles-lora profiles-qlora candidates)
started=$(date +%s)
for name in "${@:-${all[@]}}"; do
    case $name in
    # shellcheck disable=SC2086  # one column per line, no spaces inside one: split on purpose
    profiles-lora) columns=$(profile_columns lora) || exit 1; group profiles-lora lora seed $columns ;;
    profiles-qlora) columns=$(profile_columns qlora) || exit 1; group profiles-qlora qlora "b1ckpt:$q1" $columns ;;
    lora1) group lora1 lora seed config "b4:$b=4,$ckpt=false" "b4bf16:$b=4,$ckpt=false,$bf16" \
        "b8bf16:$b=8,$ckpt=false,$bf16" "b1bf16:$b=1,$ckpt=false,$bf16" ;;
    qlora1) group qlora1 qlora "b1ckpt:$q1" "b2ckpt:$b=2,bf16=false" "b4ckpt:$b=4,bf16=false" \
        "b8ckpt:$b=8,bf16=false" "b4ckptbf16:$b=4,$bf16" ;;
    lora2) group lora2 lora "b2bf16:$b=2,$ckpt=false,$bf16" "b16ckptbf16:$b=16,$bf16" \
        "b4bf16compile:$b=4,$ckpt=false,$bf16,torch_compile=true" ;;
    qlora2) group qlora2 qlora "b1:$b=1,$ckpt=false,bf16=false" "b8ckptbf16:$b=8,$bf16" \
        "b2bf16:$b=2,$ckpt=false,$bf16" "b1ckpt:$q1" ;;
    candidates) group candidates lora "b8bf16liger:$b=8,$ckpt=false,$bf16,use_liger_kernel=true" \
        "b4bf16ligercompile:$b=4,$ckpt=false,$bf16,use_liger_kernel=true,torch_compile=true" ;;
    kernels) group kernels lora "b4bf16:$b=4,$ckpt=false,$bf16" "b4bf16liger:$b=4,$ckpt=false,$bf16,use_liger_kernel=true" \
        "b4bf16compile:$b=4,$ckpt=false,$bf16,torch_compile=true" config ;;
    *) echo "unknown group $name (${all[*]} lora1 qlora1 lora2 qlora2 kernels)"; exit 2 ;;
    esac
done
echo "[gpu] $(date +%T) done in $(($(date +%s) - started)) s; failed: ${failed[*]:-none}" | tee -a "$OUT/gpu.log"
[ ${#failed[@]} = 0 ]
