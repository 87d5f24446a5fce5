"""Print the pinned versions from cookiecutter.json "_pins" as a pip constraints file."""

import json
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    return json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))["_pins"]


if __name__ == "__main__":
    print("\n".join(f"{name}=={version}" for name, version in sorted(pins().items())))
