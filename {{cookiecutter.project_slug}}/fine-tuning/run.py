"""Run the Olive workflow and put each model it makes where the rest of the project looks for it.

    python fine-tuning/run.py [--config fine-tuning/olive-config.json]

Runs `olive run` from the project root (every path in the config is relative to it) with telemetry off,
then copies the adapter and the merged model out of Olive's cache into gen-model/, plots the training loss,
and exits non-zero when Olive made no model: olive-ai 0.13 can log "No output model produced" and still
exit 0. QLoRA with int4 takes two olive runs, split at the Rtn pass (see stages()). After the training data
changed, Olive's cache is cleared first (see forget_stale_runs()).
"""

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "setup"))
import project  # noqa: E402

# which model each pass makes, by the name chat.py and the README use
OUTPUT_OF = {"lora": "adapter", "qlora": "adapter", "mergeadapterweights": "merged", "modelbuilder": "onnx"}
OUTPUTS_RECORD = "outputs.json"
LOG_DICT = re.compile(r"\{'(?:loss|eval_loss)'.*?\}")


class WorkflowError(RuntimeError):
    """The workflow did not produce what the config asks for; the message says what to do."""


def _resolve(path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else project.ROOT / candidate


def preflight(config: dict) -> None:
    model_path = _resolve(config["input_model"]["model_path"])
    if not (model_path / "config.json").is_file():
        raise WorkflowError(
            f"{model_path}: no base model there; download it with `python model-cache/download.py` "
            "(or run `python setup/smoke.py` for the offline smoke run)"
        )
    if not any(model_path.glob("*.safetensors")) and not any(model_path.glob("*.bin")):
        raise WorkflowError(
            f"{model_path}: config.json but no weights (*.safetensors); a download that stopped early? "
            "run `python model-cache/download.py` again"
        )
    for name in project.data_files(config):
        if not _resolve(name).is_file():
            raise WorkflowError(
                f"{name}: training data not found; make it with `python datasets/prepare.py <your data file>` "
                "(see datasets/README.md)"
            )


# in Olive's cache folder: the training data its cached runs were trained on
DATA_RECORD = "training-data.json"


def data_fingerprint(config: dict) -> dict[str, str]:
    """sha256 of each training data file the config reads."""
    found = {}
    for name in project.data_files(config):
        digest = hashlib.sha256()
        with open(_resolve(name), "rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
        found[name] = digest.hexdigest()
    return found


def forget_stale_runs(config: dict) -> None:
    """Clear Olive's cache when the training data changed since the runs it holds.

    Olive finds a cached run by the pass config, in which the data is only a path such as datasets/train.jsonl,
    so after `prepare.py new-data.csv --force` it would hand back the training of the old data. (It hashes
    models by their files, so a changed base or merged model is run again without this.)
    """
    now = data_fingerprint(config)
    if not now:  # a convert-only project trains on nothing
        return
    cache = _resolve(config.get("cache_dir", ".olive-cache"))
    record = cache / DATA_RECORD
    try:
        before = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    if before != now and cache.is_dir() and any(cache.iterdir()):
        changed = "changed since" if before is not None else "unknown for"
        print(f"[run] the training data is {changed} the runs in {cache}: clearing it, so the model trains again")
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(now, indent=2), encoding="utf-8")


def run_olive(config_path: Path, log_path: Path) -> str:
    """Run `olive run`, echoing its output and keeping it in log_path; return the whole log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "olive", "run", "--config", str(config_path)]
    lines = []
    with (
        open(log_path, "w", encoding="utf-8") as log,
        subprocess.Popen(
            command,
            cwd=project.ROOT,
            env=project.olive_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as process,
    ):
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                log.write(line)
                lines.append(line)
        except KeyboardInterrupt:
            # olive's own traceback for the same Ctrl-C says nothing more; stop it (if only this process got
            # the signal, it would go on training) and let main() say what is left
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            raise
        returncode = process.wait()
    output = "".join(lines)
    if returncode != 0:
        raise WorkflowError(f"olive run failed (exit {returncode}); the last lines above say why; log: {log_path}")
    if "No output model produced" in output:
        raise WorkflowError(f"olive run produced no model (a pass failed or was pruned); see {log_path}")
    return output


def pass_types(config: dict) -> list[str]:
    """The passes' types in order, lower case, as Olive records them in footprint.json's from_pass."""
    return [str(spec.get("type", "")).lower() for spec in config["passes"].values()]


def collect_outputs(config: dict, gen_dir: Path) -> dict[str, Path]:
    """Copy the adapter and merged model out of Olive's cache; return where each model is."""
    output_dir = _resolve(config["output_dir"])
    footprint_file = output_dir / "footprint.json"
    if not footprint_file.is_file():
        raise WorkflowError(f"{output_dir}: Olive wrote no footprint.json, so no model was produced")
    nodes = json.loads(footprint_file.read_text(encoding="utf-8"))
    types = pass_types(config)
    final = types[-1]
    found: dict[str, Path] = {}
    copies: dict[Path, Path] = {}  # made only once every model is there: a failed run leaves gen-model/ as it was
    for node in nodes.values():
        model_config = (node.get("model_config_data") or {}).get("config", {})
        kind = (node.get("from_pass") or "").lower()  # Olive records the pass type here
        if kind in ("lora", "qlora") and model_config.get("adapter_path"):
            found["adapter"] = gen_dir / "adapter"
            copies[found["adapter"]] = Path(model_config["adapter_path"])
        elif kind == "mergeadapterweights":
            # Olive saves a final Hugging Face model into <output_dir>/model
            found["merged"] = output_dir / "model" if kind == final else gen_dir / "merged"
            if kind != final:
                copies[found["merged"]] = Path(model_config["model_path"])
        elif kind == "modelbuilder" and any(output_dir.glob("*.onnx")):
            found["onnx"] = output_dir
    missing = [OUTPUT_OF[kind] for kind in types if OUTPUT_OF.get(kind) and OUTPUT_OF[kind] not in found]
    if missing:
        raise WorkflowError(f"olive run finished without the {', '.join(missing)} model(s); see the log above")
    for destination, source in copies.items():
        _copy(source, destination)
    return found


def _copy(source: Path, destination: Path) -> Path:
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(source, destination)
    return destination


def parse_losses(log_text: str) -> dict[str, list[float]]:
    losses = {"loss": [], "eval_loss": []}
    for match in LOG_DICT.finditer(log_text):
        try:
            record = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            continue
        for key in losses:
            if key in record:
                losses[key].append(float(record[key]))
    return losses


def plot_losses(losses: dict[str, list[float]], training_args: dict, png: Path) -> Path | None:
    if not losses["loss"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    every = training_args.get("logging_steps", 1)
    axes.plot([every * (i + 1) for i in range(len(losses["loss"]))], losses["loss"], marker=".", label="train")
    if losses["eval_loss"]:
        every_eval = training_args.get("eval_steps", every)
        xs = [every_eval * (i + 1) for i in range(len(losses["eval_loss"]))]
        axes.plot(xs, losses["eval_loss"], marker="o", label="eval")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=100)
    plt.close(figure)
    return png


def stages(config: dict, config_path: Path, gen_dir: Path) -> list[tuple[dict, Path]]:
    """The olive runs the config takes, each (config, its file): one, or two after a QLoRA merge.

    olive-ai 0.13's MergeAdapterWeights hands QLoRA's bitsandbytes load settings on to the merged model, and the
    Rtn pass then refuses it ("existing quantization configuration"). So a second run starts at Rtn, from the
    merged model as a plain HfModel.
    """
    names = list(config["passes"])
    types = pass_types(config)
    if "qlora" not in types or "rtn" not in types or "mergeadapterweights" not in types[: types.index("rtn")]:
        return [(config, config_path)]
    cut = types.index("rtn")
    merged_dir = _resolve(config["output_dir"]).parent / "merged"
    first = {**config, "passes": {n: config["passes"][n] for n in names[:cut]}, "output_dir": str(merged_dir)}
    second = {
        **config,
        "input_model": {**config["input_model"], "model_path": str(merged_dir / "model")},
        "passes": {n: config["passes"][n] for n in names[cut:]},
    }
    second.pop("data_configs", None)
    runs = []
    for number, stage in enumerate((first, second), start=1):
        path = gen_dir / f"olive-config.run{number}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stage, indent=2, ensure_ascii=False), encoding="utf-8")
        runs.append((stage, path))
    return runs


def _recorded(path: Path, gen_dir: Path) -> str:
    """A path for outputs.json: relative to its folder when inside this project, so that a moved or copied
    project still finds its own models (chat.py reads it relative to the record's folder)."""
    path, root = path.resolve(), project.ROOT.resolve()
    if path == root or root in path.parents:
        return os.path.relpath(path, gen_dir.resolve())
    return str(path)


def run_workflow(config_path: Path, gen_dir: Path | None = None) -> dict[str, Path]:
    try:
        config = project.load_config(config_path)
    except project.ConfigError as error:
        raise WorkflowError(str(error)) from None
    config_path = config_path.resolve()
    gen_dir = gen_dir or project.GEN_MODEL
    preflight(config)
    forget_stale_runs(config)
    runs = stages(config, config_path, gen_dir)
    log_text, found = "", {}
    for number, (stage, path) in enumerate(runs, start=1):
        if len(runs) > 1:
            print(f"[run] olive run {number} of {len(runs)}: {', '.join(stage['passes'])}", flush=True)
        log_text += run_olive(path, gen_dir / ("olive-run.log" if number == 1 else f"olive-run{number}.log"))
        found.update(collect_outputs(stage, gen_dir))
    training_args = next((p.get("training_args", {}) for p in config["passes"].values() if "training_args" in p), {})
    png = plot_losses(parse_losses(log_text), training_args, gen_dir / "training-loss.png")
    record = {name: _recorded(path, gen_dir) for name, path in found.items()}
    base = _resolve(config["input_model"]["model_path"]).resolve()
    if "adapter" in found and base != (project.ROOT / project.load()["model_dir"]).resolve():
        # the adapter goes with the model it was trained on (chat.py loads it from here)
        record["base"] = _recorded(base, gen_dir)
    (gen_dir / OUTPUTS_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    if png:
        found["loss plot"] = png
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=project.OLIVE_CONFIG, help="Olive workflow config")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        found = run_workflow(args.config)
    except WorkflowError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # olive got the same Ctrl-C; models are copied into gen-model/ only after a run finished
        print(
            "\nInterrupted: gen-model/ keeps the models of the last finished run; run this again to start over "
            "(passes that finished come from Olive's cache, the config's cache_dir)",
            file=sys.stderr,
        )
        return 130
    print(f"\nDone in {time.perf_counter() - started:.0f} s. Outputs:")
    for name, path in found.items():
        print(f"  {name:10s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
