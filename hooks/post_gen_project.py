"""Remove the files of variants not chosen, then print the next steps.

Stdlib only; it never fails generation for a machine problem: it reports.
"""

import json
import shutil
import sys
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | jsonify }}""")


def remove_unused_variants(root: Path, context: dict) -> None:
    if context["compute_target"] != "azureml":
        shutil.rmtree(root / "fine-tuning" / "azureml", ignore_errors=True)


def next_steps(context: dict) -> str:
    model = context["base_model"]
    lines = [
        f"Created {context['project_slug']}/ for {model} ({context['finetune_method']}, "
        f"ONNX {context['onnx_precision']} on {context['execution_provider']}).",
        "Next steps (run them from the project folder):",
        f"  cd {context['project_slug']}",
        "  python -m pip install -r setup/requirements.txt",
        "  python setup/smoke.py                     # offline: the whole workflow on a tiny model",
    ]
    # download_model / check_environment: the download script and environment check come with issue #4
    backend = "onnx" if context["onnx_precision"] != "none" else "merged"
    lines += [
        f"  hf download {model} --local-dir model-cache/{model}",
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
        print(next_steps(CONTEXT))
    except Exception as error:  # noqa: BLE001 - the project is written; report, do not delete it
        print(f"WARNING: post-generation step failed ({error}); the project is complete, see README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
