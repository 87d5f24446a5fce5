"""Offline smoke run: the project's own Olive workflow, end to end, on a tiny model of the same architecture.

    python setup/smoke.py

Builds a tiny random model and tokenizer (no download), derives a smoke config from
fine-tuning/olive-config.json (only the model path, step counts, sequence length and output folders change,
plus the CPU provider when this machine has no CUDA GPU), runs it through fine-tuning/run.py, then answers one
prompt with each backend. Everything lands in gen-model/smoke/; the answers are noise (random weights): the
run proves the pipeline, not the model.
"""

import argparse
import copy
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SETUP = Path(__file__).resolve().parent
sys.path.insert(0, str(SETUP))
sys.path.insert(0, str(SETUP.parent / "fine-tuning"))
sys.path.insert(0, str(SETUP.parent / "inferences"))
sys.path.insert(0, str(SETUP.parent / "datasets"))
import chat  # noqa: E402
import prepare  # noqa: E402
import project  # noqa: E402
import run  # noqa: E402
import tiny_model  # noqa: E402

SMOKE_STEPS = 6
NEW_TOKENS = 12
# written first into every work dir: a later run empties only a folder that holds it (see refuse_work_dir)
MARKER = "smoke-run.json"


def derive_config(config: dict, model_dir: Path, work: Path, cuda: bool) -> tuple[dict, list[str]]:
    """The project's config with only the smoke-run changes; returns it and a line per change."""
    smoke = copy.deepcopy(config)
    changes = [f"input model -> {model_dir}"]
    smoke["input_model"]["model_path"] = str(model_dir)
    for data_config in smoke.get("data_configs", []):
        data_config["pre_process_data_config"]["max_seq_len"] = tiny_model.SEQ_LEN
        files = data_config["load_dataset_config"]["data_files"]
        data_config["load_dataset_config"]["data_files"] = str(project.ROOT / files)
    if smoke.get("data_configs"):
        changes.append(f"max_seq_len -> {tiny_model.SEQ_LEN}")
    for spec in smoke["passes"].values():
        if "training_args" in spec:
            spec["training_args"].update(max_steps=SMOKE_STEPS, eval_steps=SMOKE_STEPS // 2, logging_steps=1)
            changes.append(f"max_steps -> {SMOKE_STEPS} (eval every {SMOKE_STEPS // 2}, log every step)")
    final = "onnx" if any(s["type"] == "ModelBuilder" for s in smoke["passes"].values()) else "merged"
    smoke["output_dir"] = str(work / final)
    smoke["cache_dir"] = str(work / "olive-cache")
    changes.append(f"outputs -> {work}")
    accelerators = smoke["systems"]["local_system"]["accelerators"]
    if not cuda and accelerators[0]["execution_providers"] != ["CPUExecutionProvider"]:
        accelerators[:] = [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]
        if final == "onnx":
            changes.append("no CUDA GPU here: ONNX model built for the CPU provider")
        for spec in smoke["passes"].values():
            if spec["type"] == "ModelBuilder" and spec.get("precision") == "fp16":
                spec["precision"] = "fp32"
                changes.append("fp16 needs CUDA: ONNX precision fp32 for the smoke run")
    if not cuda:
        for spec in smoke["passes"].values():
            dropped = project.drop_gpu_only(spec.get("training_args", {}))
            if dropped:
                changes.append(f"no CUDA GPU here: training without {', '.join(dropped)} (the GPU profile's)")
    return smoke, changes


def refuse_work_dir(work: Path) -> str | None:
    """Why work may not be emptied for this run (every run starts from an empty folder), or None."""
    if work.exists() and not work.is_dir():
        return "not a folder"
    if work.is_dir() and any(work.iterdir()) and not (work / MARKER).is_file():
        return "not empty and not a smoke run's folder"
    return None


def remake(work: Path) -> None:
    """An empty work dir that holds the marker: the earlier run's outputs are gone only from here on."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    note = {"made_by": "python setup/smoke.py", "note": "the next smoke run into this folder deletes it first"}
    (work / MARKER).write_text(json.dumps(note, indent=2), encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=project.GEN_MODEL / "smoke",
        help="where everything lands: a new or empty folder, or an earlier smoke run's (emptied first)",
    )
    parser.add_argument("--prompt", help="question to ask each backend (default: the first training row)")
    args = parser.parse_args(argv)
    facts = project.load()
    work = args.work_dir.resolve()
    problem = refuse_work_dir(work)
    if problem:
        print(f"ERROR: --work-dir {project.shown(work)}: {problem}; choose another --work-dir", file=sys.stderr)
        return 1
    # everything that can fail is checked before the earlier run's outputs are removed
    config_name = project.shown(project.OLIVE_CONFIG)
    try:
        config = project.load_config()
        dataset = prepare.Layout(facts, config).train_file
    except project.ConfigError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    except prepare.PrepareError as error:
        print(f"ERROR: {config_name}: {error}; regenerate or fix the config", file=sys.stderr)
        return 1
    if not dataset.is_file():
        print(f"ERROR: {dataset}: no prepared training data; run `python datasets/prepare.py` first", file=sys.stderr)
        return 1
    cuda = chat.has_cuda()
    try:
        smoke_config, changes = derive_config(config, work / "tiny-model", work, cuda)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        print(
            f"ERROR: {config_name}: not shaped like this project's Olive config ({type(error).__name__}: {error}); "
            "run `python fine-tuning/check_config.py`, or regenerate the project",
            file=sys.stderr,
        )
        return 1
    try:
        remake(work)
    except OSError as error:
        print(f"ERROR: --work-dir {project.shown(work)}: cannot empty it ({error.strerror or error})", file=sys.stderr)
        return 1
    timings: dict[str, float] = {}
    summary: dict = {"base_model": facts["base_model"], "timings_s": timings, "answers": dict()}

    started = time.perf_counter()
    model_dir = tiny_model.build(facts, dataset, work / "tiny-model")
    timings["tiny model"] = time.perf_counter() - started
    print(f"[smoke] tiny {facts['base_model']}-shaped model in {model_dir} ({timings['tiny model']:.1f} s)")

    config_path = work / "olive-config.json"
    config_path.write_text(json.dumps(smoke_config, indent=2, ensure_ascii=False), encoding="utf-8")
    print("[smoke] config derived from fine-tuning/olive-config.json: " + "; ".join(changes))

    started = time.perf_counter()
    try:
        found = run.run_workflow(config_path, gen_dir=work)
    except run.WorkflowError as error:
        print(f"ERROR: smoke run: {error}", file=sys.stderr)
        return 1
    timings["olive run"] = time.perf_counter() - started
    summary["outputs"] = {name: str(path) for name, path in found.items()}

    question = args.prompt
    if question is None:
        first = json.loads(dataset.read_text(encoding="utf-8").splitlines()[0])
        question = str(first[facts["question_column"]])
    paths = chat.default_paths(work)
    for backend_name in chat.BACKENDS:
        if backend_name not in found:
            continue
        started = time.perf_counter()
        # the onnx backend answers on the provider the model was built for (above: the CPU without CUDA)
        python = chat.onnx_python(None, paths["onnx"]) if backend_name == "onnx" else Path(sys.executable)
        if python != Path(sys.executable):
            # onnx on CUDA answers in .venv-onnx-cuda (setup/onnx_cuda_env.py), through chat.py: text, no ids
            print(f"[smoke] onnx answers in {python}: ", flush=True)
            chat_py = str(project.ROOT / "inferences" / "chat.py")
            options = ["--gen-dir", str(work), "--prompt", question, "--max-new-tokens", str(NEW_TOKENS)]
            command = [str(python), chat_py, "--backend", "onnx", *options]
            if subprocess.run(command, env=chat.onnx_cuda_env.child_environ(), check=False).returncode:
                print("ERROR: smoke run: the onnx model did not answer in .venv-onnx-cuda (above)", file=sys.stderr)
                return 1
            timings["answer (onnx)"] = time.perf_counter() - started
            continue
        try:
            # float32 PyTorch: the reference the fp32 ONNX model must match token for token
            backend = chat.load_backend(backend_name, paths, dtype="float32")
        except chat.Unavailable as error:
            print(f"ERROR: smoke run: {error}", file=sys.stderr)
            return 1
        print(f"[smoke] {backend_name} answers {question!r}: ", end="", flush=True)
        ids = chat.answer(backend, question, NEW_TOKENS)
        timings[f"answer ({backend_name})"] = time.perf_counter() - started
        summary["answers"][backend_name] = ids
    answers = summary["answers"]
    if "onnx" in answers and "merged" in answers:
        same = 0
        for a, b in zip(answers["onnx"], answers["merged"], strict=False):
            if a != b:
                break
            same += 1
        summary["onnx_merged_greedy_agreement"] = same
        # fp32 ONNX matches float32 PyTorch token for token; int4 rounds every weight, and the random model's
        # near-tied logits then part at once: no sign of a fault
        why = "" if facts["onnx_precision"] == "fp32" else f" ({facts['onnx_precision']} weights: expected to differ)"
        print(f"[smoke] first greedy tokens equal between ONNX and merged PyTorch: {same} of {NEW_TOKENS}{why}")
    (work / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print("[smoke] wall time per step: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"[smoke] OK: {', '.join(found)} made and answering; details in {work / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
