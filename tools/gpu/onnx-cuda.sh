#!/usr/bin/env bash
# ONNX on CUDA through a CUDA project's own .venv-onnx-cuda, over a few `device` calls (after
# tools/gpu/prepare-onnx.sh). One call per part, each within the machine's 30 s warm window after the last:
#   device run, carry [".gpu-onnx/project", ".gpu-onnx/manifest", ".gpu-onnx/parts/part.NN"], timeout_s 600:
#     bash tools/gpu/onnx-cuda.sh
# Each call keeps its part in $STATE (a warm machine keeps /tmp); the first also builds the random full-size
# model on the GPU (setup/benchmark_train.py's, bf16). The call that brings the last part then:
#   1. makes .venv-onnx-cuda from the parts' wheels: onnxruntime-gpu and onnxruntime-genai-cuda as
#      setup/requirements-onnx-cuda.txt pins them; the image's numpy and CUDA 13 libraries stand in for the numpy
#      pin and the [cuda,cudnn] extras (below);
#   2. answers with the tiny model that olive-ai and the pinned genai built for CUDA, through
#      inferences/chat.py, which runs itself again in .venv-onnx-cuda: does genai-cuda 0.18 read that model;
#   3. benchmarks that tiny model (the onnx worker in .venv-onnx-cuda, merged bf16 in the image's torch);
#   4. builds the full-size int4 model with .venv-onnx-cuda's own genai builder (olive-ai and genai 0.14.1 are
#      not on the image; block 32 as the workflow's Rtn pass);
#   5. benchmarks it against torch bf16 generate: one 128-token prompt, 128 new tokens, 2 repeats.
# Results go to $OUT: onnx-cuda.log, gpu.txt, versions.txt, cuda-tiny.json, full.json (+ their PNGs).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}; STATE=${STATE:-/tmp/onnx-cuda}
export OLIVE_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
mkdir -p "$OUT" "$STATE/parts"
project=$PWD/.gpu-onnx/project
venv=$project/.venv-onnx-cuda/bin/python
if [ -n "${TINY:-}" ]; then  # a check of this script on a CPU (prepare-onnx.sh with CPU wheels), not a figure
    PY=${PY:-$PWD/.venv/bin/python}; size=tiny; device=cpu; chat=("$venv" inferences/chat.py --provider cpu)
    bench=(--provider cpu --onnx-python "$venv")
else  # chat.py and benchmark.py choose .venv-onnx-cuda by themselves, as in a user's CUDA project
    PY=${PY:-python3}; size=full; device=cuda; chat=("$PY" inferences/chat.py); bench=()
fi
log() { echo "[onnx-cuda] $(date +%T) $*" | tee -a "$OUT/onnx-cuda.log"; }
step() {  # NAME COMMAND...: run it with its output in the log; a failure ends the script
    local name=$1; shift
    log "$name"
    "$@" 2>&1 | tee -a "$OUT/onnx-cuda.log"
    [ "${PIPESTATUS[0]}" = 0 ] || { log "FAILED: $name"; exit 1; }
}
cp .gpu-onnx/parts/part.* "$STATE/parts/" 2>/dev/null
mapfile -t parts < <(awk '{print $2}' .gpu-onnx/manifest)
missing=(); for part in "${parts[@]}"; do [ -f "$STATE/parts/$part" ] || missing+=("$part"); done
log "parts here: $((${#parts[@]} - ${#missing[@]})) of ${#parts[@]}"
full=$STATE/$size
if [ ! -f "$full/merged/config.json" ]; then
    [ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    (cd "$project" && step "random $size model ($device)" "$PY" ../../tools/gpu/random_model.py "$size" "$device" "$full/merged") || exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
    log "next call: carry .gpu-onnx/parts/${missing[0]} (missing: ${missing[*]})"
    exit 0
fi
(cd "$STATE/parts" && step "parts match the manifest" sha256sum -c --quiet "$OLDPWD/.gpu-onnx/manifest") || exit 1
cd "$project" || exit 1
if [ ! -x "$venv" ]; then
    rm -rf "$STATE/wheels" && mkdir -p "$STATE/wheels"
    step "unpack the wheels" bash -c "cat '$STATE'/parts/part.* | xz -d | tar -C '$STATE/wheels' -xf -"
    # without pip of its own (a base Python without ensurepip cannot make one); the main pip installs into it
    step "make .venv-onnx-cuda" "$PY" -m venv --without-pip .venv-onnx-cuda
    step "install the wheels" "$PY" -m pip --python "$venv" install -q --no-index --no-deps --no-compile \
        "$STATE"/wheels/*.whl
    # nothing can be fetched there: the main interpreter's packages stand in for the numpy pin (a .pth file puts
    # them after the venv's own, so its onnxruntime wins), and its nvidia folder (CUDA 13) for the [cuda,cudnn]
    # extras, linked where those extras would install it, beside onnxruntime (onnxruntime.preload_dlls looks there)
    main_site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    venv_site=$("$venv" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$main_site" >"$venv_site/main-interpreter.pth"
    [ -d "$main_site/nvidia" ] && ln -s "$main_site/nvidia" "$venv_site/nvidia"
fi
{
    "$PY" -c "import sys, torch, transformers
print('main: python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
    "$venv" -c "import onnxruntime as ort, onnxruntime_genai as og
print('.venv-onnx-cuda: onnxruntime', ort.__version__, ort.get_available_providers(), ort.__file__)
print('.venv-onnx-cuda: onnxruntime-genai', og.__version__, og.__file__)"
} 2>&1 | tee "$OUT/versions.txt"
step "chat.py answers with the tiny model olive-ai and the pinned genai built for CUDA" "${chat[@]}" --backend onnx \
    --gen-dir gen-model/cuda-tiny --prompt "What is a solar panel?" --max-new-tokens 16
step "benchmark, tiny model" "$PY" inferences/benchmark.py --gen-dir gen-model/cuda-tiny --backends onnx,merged:bfloat16 \
    --prompts 1 --repeats 1 --new-tokens 16 "${bench[@]}" --out "$OUT/cuda-tiny.json"
if [ ! -f "$full/onnx/genai_config.json" ]; then
    step "int4 $size model, .venv-onnx-cuda's genai builder" "$venv" -m onnxruntime_genai.models.builder \
        -i "$full/merged" -o "$full/onnx" -p int4 -e "$device" -c "$STATE/cache" --extra_options int4_block_size=32
fi
step "benchmark, $size model: int4 ONNX against torch bf16" "$PY" inferences/benchmark.py --gen-dir "$full" \
    --backends onnx,merged:bfloat16 --prompts 1 --repeats 2 "${bench[@]}" --out "$OUT/$size.json"
log "done"
