"""Remove the files of variants not chosen, prepare the sample data, check the machine, fetch the model if
asked, then print the next steps.

Stdlib only, and it never fails generation: cookiecutter would delete the whole project. Each step runs a
script of the generated project, so a user can re-run it and see the same output.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | jsonify }}""")
PREPARE = ["datasets/prepare.py"]
CHECK_ENV = ["setup/check_env.py", "--fast"]
DOWNLOAD = ["model-cache/download.py"]
STEP_TIMEOUT_S = 120


def remove_unused_variants(root: Path, context: dict) -> None:
    if context["compute_target"] != "azureml":
        shutil.rmtree(root / "fine-tuning" / "azureml", ignore_errors=True)


def run_step(title: str, python: str, args: list, root: Path, timeout) -> bool:
    """Run one project script with its output shown as it comes; report instead of raising."""
    print(f"\n== {title}: {Path(python).name} {' '.join(args)}", flush=True)
    try:
        # no __pycache__ folders in a freshly generated project
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        result = subprocess.run([python, *args], cwd=root, env=env, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        print(f"WARNING: {title} did not run ({error}); run it later: python {' '.join(args)}")
        return False
    return result.returncode == 0


def interpreter_with(module: str) -> str | None:
    """The first Python here that can import module: the active virtualenv, this one, then the PATH's."""
    candidates = []
    if os.environ.get("VIRTUAL_ENV"):
        venv = Path(os.environ["VIRTUAL_ENV"])
        candidates += [str(venv / "bin" / "python"), str(venv / "Scripts" / "python.exe")]
    candidates += [sys.executable, shutil.which("python3"), shutil.which("python")]
    for python in dict.fromkeys(c for c in candidates if c and Path(c).is_file()):
        try:
            probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return python
    return None


def fetch_model(root: Path) -> str:
    python = interpreter_with("huggingface_hub")
    if python is None:
        return "no Python here has huggingface_hub yet: after installing setup/requirements.txt run"
    if run_step("Base model download", python, DOWNLOAD, root, timeout=None):
        return ""
    return "the download did not finish (the line above says why); fix that, then run"


def next_steps(context: dict, download_note: str | None) -> str:
    model = context["base_model"]
    lines = [
        "",
        f"Created {context['project_slug']}/ for {model} ({context['finetune_method']}, "
        f"ONNX {context['onnx_precision']} on {context['execution_provider']}).",
        "Next steps (run them from the project folder):",
        f"  cd {context['project_slug']}",
        "  python -m pip install -r setup/requirements.txt",
        "  python setup/check_env.py                 # GPU, CUDA, packages, disk: what is missing and how to fix it",
        "  python setup/smoke.py                     # offline: the whole workflow on a tiny model",
        "  python datasets/prepare.py <your data>    # CSV/JSON/JSONL/Parquet -> the files Olive reads",
    ]
    if download_note is None:
        lines.append("  python model-cache/download.py            # the base model, pinned revision")
    elif download_note:
        lines.append(f"  # {download_note}:")
        lines.append("  python model-cache/download.py")
    backend = "onnx" if context["onnx_precision"] != "none" else "merged"
    lines += [
        "  python fine-tuning/check_config.py        # Olive reads every key of the config",
        "  python fine-tuning/run.py                 # olive run, then reports where the models landed",
        f"  python inferences/chat.py --backend {backend} --prompt 'Hello'",
        "See README.md for each step.",
    ]
    return "\n".join(lines)


def main() -> int:
    root = Path.cwd()
    try:
        remove_unused_variants(root, CONTEXT)
        run_step("Sample data", sys.executable, PREPARE, root, STEP_TIMEOUT_S)
        if CONTEXT["check_environment"] in (True, "True", "true", "yes", "y", "1"):
            run_step("Environment check (fast; the full check: python setup/check_env.py)", sys.executable,
                     CHECK_ENV, root, STEP_TIMEOUT_S)
        download_note = None
        if CONTEXT["download_model"] in (True, "True", "true", "yes", "y", "1"):
            download_note = fetch_model(root)
        print(next_steps(CONTEXT, download_note))
    except Exception as error:  # noqa: BLE001 - the project is written; report, do not delete it
        print(f"WARNING: post-generation step failed ({error}); the project is complete, see README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
