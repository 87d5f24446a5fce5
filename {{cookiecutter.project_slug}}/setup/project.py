"""The project's facts (setup/project.json) and the chat format, for every script in this repo.

project.json is rendered from the template's model table and chat formats; the Olive config's
text_template was rendered from the same entries, so training and inference format prompts identically.
"""

import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLIVE_CONFIG = ROOT / "fine-tuning" / "olive-config.json"
REQUIREMENTS = ROOT / "setup" / "requirements.txt"
GEN_MODEL = ROOT / "gen-model"
# how every script tells the user to install what setup/requirements.txt pins
PIP_INSTALL = "python -m pip install -r setup/requirements.txt"


def load() -> dict:
    return json.loads((ROOT / "setup" / "project.json").read_text(encoding="utf-8"))


class ConfigError(ValueError):
    """The Olive config cannot be read; the message names the file and says what to do."""


def shown(path: Path) -> str:
    """A path as the user knows it: relative to the project root when inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


# The files that hold a tokenizer's vocabulary, any one group: Phi-3 and Phi-3.5 ship tokenizer.json and a
# sentencepiece tokenizer.model, Phi-4-mini tokenizer.json and a BPE vocab.json + merges.txt. transformers builds
# a tokenizer from tokenizer_config.json alone, with an empty vocabulary: every text would be 0 tokens.
TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"))


def tokenizer_missing(folder: Path) -> str | None:
    """What folder lacks to hold a tokenizer with its vocabulary, or None."""
    if any(all((folder / name).is_file() for name in group) for group in TOKENIZER_FILES):
        return None
    return "no tokenizer.json (nor tokenizer.model, nor vocab.json + merges.txt)"


def load_config(path: Path = OLIVE_CONFIG, flag: str = "--config") -> dict:
    """The Olive workflow config as a dict, or ConfigError. flag: the option that named a path other than the
    project's config, so that a mistyped path is blamed on the option, not on the project ("" for an argument)."""
    ours = path.resolve() == OLIVE_CONFIG.resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if ours:
            raise ConfigError(f"{shown(path)}: no such file; regenerate the project") from None
        named = f"{flag} {path}" if flag else str(path)
        raise ConfigError(f"{named}: no such file; give the path of an Olive workflow config") from None
    except OSError as error:
        raise ConfigError(f"{shown(path)}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{shown(path)}: not UTF-8 text; fix it or regenerate the project") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno}, column {error.colno}: {error.msg}"
        raise ConfigError(f"{shown(path)}: not valid JSON ({where}); fix it or regenerate the project") from None
    if not isinstance(config, dict):
        raise ConfigError(
            f"{shown(path)}: not an Olive workflow config (a JSON object); fix it or regenerate the project"
        )
    return config


def prompt_text(question: str, project: dict | None = None) -> str:
    """The text the model sees before it answers, exactly as in training."""
    chat = (project or load())["chat_format"]
    return f"{chat['user']}{question}{chat['end']}{chat['assistant']}"


def chat_tokens(chat_format: dict) -> list[str]:
    """The special tokens of a chat format (setup/project.json "chat_format"), end-of-text first."""
    turns = [chat_format[turn].strip() for turn in ("user", "assistant", "end")]
    return list(dict.fromkeys(chat_format.get("reserved", []) + turns))


def end_token(project: dict | None = None) -> str:
    return (project or load())["chat_format"]["end"].strip()


def package_key(name: str) -> str:
    """A package name as pip compares it (PEP 503): huggingface_hub and huggingface-hub are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """The versions setup/requirements.txt pins for this platform, by package_key; OSError when the file cannot
    be read. A line whose `sys_platform == "..."` marker names another platform is not pinned here."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        platform = re.search(r";\s*sys_platform\s*==\s*[\"']([^\"']+)", line)
        if match and (platform is None or sys.platform.startswith(platform.group(1))):
            found[package_key(match.group(1))] = match.group(2)
    return found


# TrainingArguments that only a GPU runs: the Trainer refuses bf16 on a CPU (without use_cpu) and tf32 without
# Ampere, and Liger's kernels are Triton (CUDA). The gpu_memory profiles set bf16 and use_liger_kernel.
GPU_ONLY_TRAINING_ARGS = ("bf16", "tf32", "use_liger_kernel")


def drop_gpu_only(training_args: dict) -> list[str]:
    """Remove the GPU-only settings from a pass's training_args in place; returns the names removed."""
    return [name for name in GPU_ONLY_TRAINING_ARGS if training_args.pop(name, None) is not None]


def data_files(config: dict | None = None) -> list[str]:
    """The training data files the Olive config reads, relative to the project root."""
    config = config or load_config()
    names = []
    for data_config in config.get("data_configs", []):
        files = data_config.get("load_dataset_config", {}).get("data_files")
        names += [files] if isinstance(files, str) else list(files or [])
    return sorted(set(names))


def olive_env() -> dict:
    """Environment for olive runs: telemetry off, offline-safe defaults kept."""
    env = dict(os.environ)
    env["OLIVE_DISABLE_TELEMETRY"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
