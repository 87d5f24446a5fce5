"""The project's facts (setup/project.json) and the chat format, for every script in this repo.

project.json is rendered from the template's model table and chat formats; the Olive config's
text_template was rendered from the same entries, so training and inference format prompts identically.
"""

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLIVE_CONFIG = ROOT / "fine-tuning" / "olive-config.json"
GEN_MODEL = ROOT / "gen-model"


def load() -> dict:
    return json.loads((ROOT / "setup" / "project.json").read_text(encoding="utf-8"))


def prompt_text(question: str, project: dict | None = None) -> str:
    """The text the model sees before it answers, exactly as in training."""
    chat = (project or load())["chat_format"]
    return f"{chat['user']}{question}{chat['end']}{chat['assistant']}"


def end_token(project: dict | None = None) -> str:
    return (project or load())["chat_format"]["end"].strip()


def data_files(config: dict | None = None) -> list[str]:
    """The training data files the Olive config reads, relative to the project root."""
    config = config or json.loads(OLIVE_CONFIG.read_text(encoding="utf-8"))
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
