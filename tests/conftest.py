import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parent.parent
CONTEXT = json.loads((TEMPLATE / "cookiecutter.json").read_text(encoding="utf-8"))
DEFAULT_SLUG = "contoso-support-assistant"
# the ruff pyproject.toml pins, beside this Python: another ruff on PATH may read the config differently
RUFF = str(Path(sys.executable).parent / "ruff")


def bake(out_dir: Path, **answers) -> Path:
    """Generate a project with the real cookiecutter (hooks included) and return its folder."""
    return Path(cookiecutter(str(TEMPLATE), no_input=True, extra_context=answers, output_dir=str(out_dir)))


def run_cli(args: list[str], cwd: Path, input_text: str | None = None, timeout: int = 600):
    return subprocess.run(
        args, cwd=cwd, input=input_text, capture_output=True, text=True, timeout=timeout, check=False
    )


def venv_reading(venv: Path, folder: str | Path) -> Path:
    """A real venv (no pip) whose site-packages also reads folder through a .pth file; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    (Path(site) / "reading.pth").write_text(f"{folder}\n", encoding="utf-8")
    return python


def foreground_sigint() -> None:
    """preexec_fn: the child gets Ctrl-C as a terminal's foreground job does. A shell's background job (CI
    started with `&`, nohup) inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored, so without
    this a Ctrl-C test would measure how the suite was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def python():
    return sys.executable


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, python):
    """Bake with the CPU provider and run the project's smoke command; each set of answers runs once a session
    (test_pipeline and test_benchmark_inference share the default LoRA int4 run)."""
    runs = {}

    def run(**answers):
        key = tuple(sorted(answers.items()))
        if key not in runs:
            project = bake(tmp_path_factory.mktemp("smoke"), execution_provider="cpu", **answers)
            result = run_cli([python, "setup/smoke.py"], project, timeout=900)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            summary = json.loads((project / "gen-model/smoke/summary.json").read_text(encoding="utf-8"))
            runs[key] = project, result, summary
        return runs[key]

    return run


@pytest.fixture(scope="session", autouse=True)
def template_is_clean():
    """A cache left in the template folder (ruff or python run there) would be baked into every project."""
    strays = [str(p.relative_to(TEMPLATE)) for p in TEMPLATE.glob("{{cookiecutter.project_slug}}/**/*")
              if p.name in (".ruff_cache", "__pycache__", ".pytest_cache")]
    assert not strays, f"remove these from the template folder first: {strays}"


SOCKET_GUARD = Path(__file__).resolve().parent / "socket_guard"


def guarded(env: dict) -> dict:
    """env for a test subprocess that loads the socket guard before anything else."""
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(SOCKET_GUARD), env.get("PYTHONPATH")]))}


def guard_this_process(monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("socket_guard_rules", SOCKET_GUARD / "sitecustomize.py")
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    monkeypatch.setattr(socket.socket, "connect", rules.connect)
    monkeypatch.setattr(socket.socket, "connect_ex", rules.connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", rules.getaddrinfo)


def closed_endpoint() -> str:
    """An http URL on 127.0.0.1 where nothing listens: a hub that is down, without touching the network."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"
