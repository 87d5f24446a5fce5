"""The workflow's tiny model built for the CUDA provider, here on a CPU: what a CUDA project's ONNX step makes.

Run from a baked CUDA project's root (tools/gpu/prepare-onnx.sh does). setup/smoke.py builds for the CPU
provider when the machine has no CUDA GPU; this keeps the project's CUDA accelerator, so olive-ai and the pinned
onnxruntime-genai write the CUDA genai_config and graph that tools/gpu/onnx-cuda.sh then runs on a GPU with
.venv-onnx-cuda's genai. Only the GPU-only training settings are dropped (the Trainer refuses bf16 on a CPU).
"""

import json
import shutil
import sys

sys.path[:0] = ["setup", "fine-tuning", "datasets"]
import prepare  # noqa: E402
import project  # noqa: E402
import run  # noqa: E402
import smoke  # noqa: E402
import tiny_model  # noqa: E402

WORK = project.GEN_MODEL / "cuda-tiny"


def main() -> int:
    facts = project.load()
    config = json.loads(project.OLIVE_CONFIG.read_text(encoding="utf-8"))
    dataset = prepare.Layout(facts, config).train_file
    work = WORK.resolve()
    model_dir = tiny_model.build(facts, dataset, work / "tiny-model")
    derived, changes = smoke.derive_config(config, model_dir, work, cuda=True)
    for spec in derived["passes"].values():
        project.drop_gpu_only(spec.get("training_args", {}))
    path = work / "olive-config.json"
    path.write_text(json.dumps(derived, indent=2), encoding="utf-8")
    print("[cuda-tiny] " + "; ".join(changes), flush=True)
    run.run_workflow(path, gen_dir=work)
    shutil.rmtree(work / "olive-cache")
    # run.py records the paths relative to the record, so the project can travel to another machine's folder
    recorded = json.loads((work / run.OUTPUTS_RECORD).read_text(encoding="utf-8"))
    genai = json.loads((work / "onnx" / "genai_config.json").read_text(encoding="utf-8"))
    providers = genai["model"]["decoder"]["session_options"]["provider_options"]
    if not any("cuda" in options for options in providers):
        print(f"ERROR: the ONNX model is not built for CUDA: provider_options {providers}", file=sys.stderr)
        return 1
    print(f"[cuda-tiny] {', '.join(recorded)} in {work}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
