"""Remove the files of variants not chosen, prepare the sample data, check the machine, fetch the model if
asked, then print the next steps.

Stdlib only, and it never fails generation: cookiecutter would delete the whole project. Each step runs a
script of the generated project, so a user can re-run it and see the same output.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | jsonify }}""")
PREPARE = ["datasets/prepare.py"]
CHECK_ENV = ["setup/check_env.py", "--fast"]
DOWNLOAD = ["model-cache/download.py"]
STEP_TIMEOUT_S = 120
VENV_STEP = "  python -m venv .venv && . .venv/bin/activate   # the project's own environment (README step 1)"
PIP_STEP = "  python -m pip install -r setup/requirements.txt"
YES = (True, "True", "true", "yes", "y", "1")


def say(text: str = "") -> None:
    """print that survives a closed pipe (`cookiecutter ... | head`): losing output must not lose the project."""
    try:
        print(text, flush=True)
    except OSError:  # BrokenPipeError among them
        drop_stdout()


def drop_stdout() -> None:
    """Send the rest of this run's output to devnull. The file descriptor itself is replaced, so that output
    still buffered for the closed pipe cannot fail again when Python exits (which would fail the hook)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def relay(stream) -> None:
    """Pass a step's output on as it comes, in chunks (a progress line ending in \\r shows at once)."""
    while True:
        try:
            chunk = os.read(stream.fileno(), 65536)
        except (OSError, ValueError):  # the pipe was closed under us (a step killed on its time limit)
            return
        if not chunk:
            return
        try:
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        except OSError:
            drop_stdout()


def remove_unused_variants(root: Path, context: dict) -> None:
    if context["compute_target"] != "azureml":
        shutil.rmtree(root / "fine-tuning" / "azureml", ignore_errors=True)
    if context["execution_provider"] != "cuda" or context["onnx_precision"] == "none":
        (root / "setup" / "requirements-onnx-cuda.txt").unlink(missing_ok=True)
    if context["finetune_method"] == "none":
        (root / "setup" / "benchmark_train.py").unlink(missing_ok=True)  # a convert-only project trains nothing


def run_step(title: str, python: str, args: list, root: Path, timeout) -> bool:
    """Run one project script with its output shown as it comes; report instead of raising.

    Its output (stderr too, so that the order stays) comes through this process rather than straight to
    cookiecutter's: when the reader has gone (`cookiecutter ... | head`) the step would die of a broken pipe
    half-way, here the output is dropped."""
    say(f"\n== {title}: {python} {' '.join(args)}")
    env = dict(
        os.environ,
        PYTHONDONTWRITEBYTECODE="1",  # no __pycache__ folders in a freshly generated project
        PYTHONUNBUFFERED="1",  # each line as it is written, not when a pipe's buffer fills
        # a pipe would get the locale's code page on Windows: what the relay passes on is in this one's encoding
        PYTHONIOENCODING=f"{sys.stdout.encoding or 'utf-8'}:replace",
    )
    try:
        with subprocess.Popen(
            [python, *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as process:
            reader = threading.Thread(target=relay, args=(process.stdout,), daemon=True)
            reader.start()
            try:
                returncode = process.wait(timeout=timeout)
            except BaseException:  # its time limit, or Ctrl-C: the project stays, the step can be run again
                process.kill()
                process.wait()
                reader.join(timeout=5)
                raise
            # a process the step left behind may hold the pipe open: its output is not worth waiting for
            reader.join(timeout=5)
    except KeyboardInterrupt:
        say(f"\nInterrupted: {title} stopped; run it later: python {' '.join(args)}")
        return False
    except (OSError, subprocess.SubprocessError) as error:
        say(f"WARNING: {title} did not run ({error}); run it later: python {' '.join(args)}")
        return False
    return returncode == 0


def candidates() -> list[str]:
    """The Pythons a user may train with: the active virtualenv, the one running cookiecutter, the PATH's."""
    found = []
    if os.environ.get("VIRTUAL_ENV"):
        venv = Path(os.environ["VIRTUAL_ENV"])
        found += [str(venv / "bin" / "python"), str(venv / "Scripts" / "python.exe")]
    found += [sys.executable, shutil.which("python3"), shutil.which("python")]
    return list(dict.fromkeys(c for c in found if c and Path(c).is_file()))


def interpreter_with(distribution: str, major: str | None = None) -> str | None:
    """The first candidate with the distribution installed (at the pinned major version, if given); checked
    through package metadata, so nothing heavy is imported."""
    probe = (
        "import sys\nfrom importlib.metadata import version\n"
        f"try:\n    v = version({distribution!r})\nexcept Exception:\n    sys.exit(1)\n"
        f"sys.exit(0 if {major!r} is None or v.split('.')[0] == {major!r} else 1)\n"
    )
    for python in candidates():
        try:
            result = subprocess.run([python, "-c", probe], capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if result.returncode == 0:
            return python
    return None


def check_environment(root: Path) -> None:
    python = interpreter_with("torch")
    if python is None:
        python = sys.executable
        say("\nNo Python here has the project's packages yet (expected before setup): the check below shows "
            "what `python -m pip install -r setup/requirements.txt` will bring.")
    run_step("Environment check (fast; the full check: python setup/check_env.py)", python, CHECK_ENV, root,
             STEP_TIMEOUT_S)


def fetch_model(root: Path) -> str:
    pin = CONTEXT["_pins"]["huggingface_hub"]
    python = interpreter_with("huggingface_hub", pin.split(".")[0])
    if python is None:
        return f"no Python here has huggingface_hub {pin} yet: after installing setup/requirements.txt run"
    if run_step("Base model download", python, DOWNLOAD, root, timeout=None):
        return ""
    return "the download did not finish (the line above says why); fix that, then run"


def onnx_cuda_step(root: Path) -> str | None:
    """The command that makes .venv-onnx-cuda, where a CUDA project runs its ONNX model (setup/onnx_cuda_env.py
    writes it); None when the project has no such model."""
    if not (root / "setup" / "requirements-onnx-cuda.txt").is_file():
        return None
    sys.dont_write_bytecode = True  # no __pycache__ in a freshly generated project
    sys.path.insert(0, str(root / "setup"))
    try:
        import onnx_cuda_env  # noqa: PLC0415 - the generated project's own module, there only after generation

        return onnx_cuda_env.create_command()
    except Exception:  # noqa: BLE001 - the file itself says how
        return "# the ONNX-on-CUDA environment: see setup/requirements-onnx-cuda.txt"


def next_steps(root: Path, context: dict, download_note: str | None, data_ready: bool) -> str:
    model = context["base_model"]
    trains = context["finetune_method"] != "none"
    azure = context["compute_target"] == "azureml"
    precision = context["onnx_precision"]
    onnx = "no ONNX model" if precision == "none" else f"ONNX {precision} on {context['execution_provider']}"
    lines = [
        "",
        f"Created {root} for {model} ({context['finetune_method']}, {onnx}).",
        "Next steps (run them from the project folder):",
        f"  cd {shlex.quote(str(root))}",
        VENV_STEP,
        PIP_STEP,
        "  python setup/check_env.py                 # GPU, CUDA, packages, RAM, disk: what is missing, how to fix it",
        "  python setup/smoke.py                     # offline: the whole workflow on a tiny model",
    ]
    onnx_cuda = onnx_cuda_step(root)
    if onnx_cuda:
        why = "# ONNX on CUDA: its own environment (why: setup/requirements-onnx-cuda.txt)"
        lines.insert(lines.index(PIP_STEP) + 1, f"  {onnx_cuda}   {why}")
    if not data_ready:
        lines.append("  python datasets/prepare.py                # the sample set was not prepared (see above)")
    if trains:
        # the sample's train/eval.jsonl are already there: prepare.py keeps them unless --force
        lines.append("  python datasets/prepare.py <your data> --force   # CSV/JSON/JSONL/Parquet, replaces the sample")
    if download_note is None and not azure:  # the Azure job downloads the base model itself (job_steps.py)
        lines.append("  python model-cache/download.py            # the base model")
    elif download_note:
        lines.append(f"  # {download_note}:")
        optional = "            # optional here: the Azure job downloads its own" if azure else ""
        lines.append(f"  python model-cache/download.py{optional}")
    lines.append("  python fine-tuning/check_config.py        # Olive reads every key of the config")
    if azure:
        lines += [
            "  python -m pip install -r fine-tuning/azureml/requirements.txt   # azure-ai-ml, to submit",
            "  az login                                  # or a service principal (fine-tuning/azureml/README.md)",
            "  cp fine-tuning/azureml/config.example.json fine-tuning/azureml/config.json   # fill in your ids",
            "  python fine-tuning/azureml/submit.py --dry-run   # the Azure ML job, validated locally",
            "  python fine-tuning/azureml/submit.py      # on your cluster; the job downloads the base model",
            "  python fine-tuning/azureml/submit.py --download <job>   # its models into gen-model/",
        ]
    else:
        lines.append("  python fine-tuning/run.py                 # olive run, then reports where the models landed")
    backend = "onnx" if context["onnx_precision"] != "none" else "merged"
    lines += [f"  python inferences/chat.py --backend {backend} --prompt 'Hello'", "See README.md for each step."]
    return "\n".join(lines)


def main() -> int:
    root = Path.cwd()
    try:
        remove_unused_variants(root, CONTEXT)
        data_ready = run_step("Sample data", sys.executable, PREPARE, root, STEP_TIMEOUT_S)
        if CONTEXT["check_environment"] in YES:
            check_environment(root)
        download_note = fetch_model(root) if CONTEXT["download_model"] in YES else None
        say(next_steps(root, CONTEXT, download_note, data_ready))
    except Exception as error:  # noqa: BLE001 - the project is written; report, do not delete it
        say(f"WARNING: post-generation step failed ({error}); the project is complete, see README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
