"""Refuse answers that cannot make a working project, before cookiecutter writes anything.

Stdlib only: this runs under cookiecutter's own interpreter. One line per problem, then exit 1.
"""

import json
import re
import sys
from pathlib import Path

CONTEXT = json.loads(r"""{{ cookiecutter | jsonify }}""")

# str.format field names: Olive fills text_template with str.format(**row)
FORMAT_UNSAFE = re.compile(r"[{}\[\].!:]")
SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")  # with fullmatch: no trailing newline slips through
SLUG_MAX = 64
# transformers' set_seed (numpy's seed) takes 0 .. 2**32 - 1
SEED_MAX = 2**32 - 1


def _number(key, kind, errors, low=None, high=None, low_open=False, high_open=False, hint=""):
    raw = CONTEXT[key]
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = kind(str(raw).strip())
    except ValueError:
        errors.append(f"{key}: '{raw}' is not {'an integer' if kind is int else 'a number'}; enter e.g. {hint}")
        return None
    if value != value or value in (float("inf"), float("-inf")):
        errors.append(f"{key}: '{raw}' is not a finite number; enter e.g. {hint}")
        return None
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else ("> " if low_open else ">= ") + str(low)
        hi = "" if high is None else ("< " if high_open else "<= ") + str(high)
        errors.append(f"{key}: {raw} is out of range; choose a value {' and '.join(x for x in (lo, hi) if x)}")
        return None
    return value


def _parents_made(context: dict) -> str:
    """A slug with a path separator made cookiecutter create (or reuse) the folders above the project's before
    this hook ran; it removes only the project's own folder, so the message names the others."""
    parts = [part for part in re.split(r"[/\\]", str(context["project_slug"])) if part not in ("", ".")]
    if len(parts) < 2 or ".." in parts:
        return ""
    made = [str(Path.cwd().parents[i]) for i in range(len(parts) - 1)]
    return f" (cookiecutter made or reused {', '.join(made)} for it: remove what is empty there)"


def validate(context: dict) -> list[str]:
    errors: list[str] = []
    if not str(context["project_name"]).strip():
        errors.append("project_name: it is empty; enter a name such as 'Contoso Support Assistant'")
    slug = str(context["project_slug"])
    if SLUG.fullmatch(slug) and len(slug) > SLUG_MAX:
        errors.append(
            f"project_slug: {slug!r} is too long; use at most {SLUG_MAX} characters (it has {len(slug)}), "
            f"e.g. {slug[:SLUG_MAX].rstrip('-_')}"
        )
    elif not SLUG.fullmatch(slug):
        errors.append(
            f"project_slug: {context['project_slug']!r} is not a folder name; use lowercase letters, digits, "
            "'-' or '_', starting with a letter or digit (e.g. contoso-support-assistant)" + _parents_made(context)
        )
    models = context["_models"]
    model = models.get(context["base_model"])
    if model is None:
        errors.append(f"base_model: {context['base_model']!r} is not supported; choose one of {', '.join(models)}")

    _number("lora_r", int, errors, low=1, hint="64")
    _number("lora_alpha", float, errors, low=0, low_open=True, hint="64")
    _number("lora_dropout", float, errors, low=0, high=1, high_open=True, hint="0.1")
    _number("learning_rate", float, errors, low=0, low_open=True, hint="0.0001")
    for key, hint in (("max_steps", "100"), ("per_device_train_batch_size", "1"), ("gradient_accumulation_steps", "4")):
        _number(key, int, errors, low=1, hint=hint)
    _number("seed", int, errors, low=0, high=SEED_MAX, hint="0")
    _number("data_seed", int, errors, low=0, high=SEED_MAX, hint="42")
    _number("max_grad_norm", float, errors, low=0, low_open=True, hint="0.3")
    _number("adam_beta2", float, errors, low=0, high=1, low_open=True, high_open=True, hint="0.999")
    context_length = model["context_length"] if model else None
    _number("max_seq_len", int, errors, low=16, high=context_length, hint="2048")

    columns = []
    for key in ("question_column", "answer_column"):
        name = str(context[key])
        if not name.strip():
            errors.append(f"{key}: it is empty; enter the column name of your data (e.g. Question)")
        elif FORMAT_UNSAFE.search(name) or "\n" in name:
            errors.append(
                f"{key}: {name!r} contains a curly brace, square bracket, '.', '!', ':' or a newline, which Olive's "
                "text_template cannot address; rename the column in your data (datasets/) and answer with the new name"
            )
        elif name.strip().isdecimal():
            # str.format reads an all-digit field name as a position: "{2024}" is an IndexError, not a column
            errors.append(
                f"{key}: {name!r} is all digits, which Olive's text_template reads as a position, not a column; "
                "rename the column in your data (datasets/) to a name with a letter, e.g. q2024, and answer with it"
            )
        elif name != name.strip():
            errors.append(
                f"{key}: {name!r} starts or ends with a space; CSV headers are read without them, "
                f"so answer {name.strip()!r}"
            )
        columns.append(name)
    if len(columns) == 2 and columns[0] == columns[1]:
        errors.append("answer_column: it is the same column as question_column; name the column holding answers")

    method, gpu_memory = context["finetune_method"], context["gpu_memory"]
    every = {name: found for name, found in context["_training_profiles"].items() if isinstance(found, dict)}
    profiles = every.get(method)
    if profiles is not None and gpu_memory not in profiles:
        fits = [name for name, found in every.items() if gpu_memory in found]
        names = list(profiles)
        errors.append(
            f"gpu_memory: {gpu_memory} has no {method} profile (LoRA's bf16 weights alone are 7.1 GiB); "
            f"choose finetune_method {' or '.join(fits)}, or gpu_memory {', '.join(names[:-1])} or {names[-1]}"
        )
    if context["finetune_method"] == "none" and context["onnx_precision"] == "none":
        errors.append(
            "onnx_precision: with finetune_method 'none' there is nothing to do; choose int4, fp16 or fp32, "
            "or choose finetune_method lora or qlora"
        )
    if context["onnx_precision"] == "fp16" and context["execution_provider"] == "cpu":
        errors.append(
            "onnx_precision: fp16 runs only on the CUDA provider (Olive would skip the ONNX step on the CPU); "
            "choose int4 or fp32, or execution_provider cuda"
        )
    return errors


def main() -> int:
    errors = validate(CONTEXT)
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
