"""ONNX on CUDA in its own environment (setup/onnx_cuda_env.py): the check, chat.py and the benchmark.

The genai pinned for olive-ai's ModelBuilder links CUDA 12 libraries that the project's CUDA 13 torch and
onnxruntime-gpu do not bring. This machine has no CUDA at all, so the dynamic loader fails here the way it fails
there. The genai packages below are stand-ins (an __init__ and a library file), because the point is what the
project does with the loader's answer: each "CUDA library" is one of bitsandbytes' real builds, which
the real loader either loads (its CPU build) or refuses for a missing libcudart.so.12 (its CUDA 12.1 build).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONTEXT, bake, venv_reading

BNB = Path(importlib.util.find_spec("bitsandbytes").submodule_search_locations[0])
LOADS = BNB / "libbitsandbytes_cpu.so"
NEEDS_CUDA_12 = BNB / "libbitsandbytes_cuda121.so"
BUILD_GENAI = CONTEXT["_pins"]["onnxruntime-genai-cuda"]
RUNTIME_GENAI = CONTEXT["_onnx_cuda_pins"]["onnxruntime-genai-cuda"]
INSTALL = ".venv-onnx-cuda/bin/python -m pip install -r setup/requirements-onnx-cuda.txt"
CREATE = f"python -m venv .venv-onnx-cuda && {INSTALL}"
MISSING = "libcudart.so.12: cannot open shared object file: No such file or directory"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the loader cases use Linux libraries")


def stand_in_genai(folder: Path, version: str, library: Path) -> Path:
    """A package named onnxruntime_genai: a CUDA build's version and is_cuda_available, and `library` as its
    CUDA library. Returns the folder to put on sys.path."""
    package = folder / "onnxruntime_genai"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f'__version__ = "{version}"\n\n\ndef is_cuda_available():\n    return True\n', encoding="utf-8"
    )
    shutil.copy(library, package / "libonnxruntime-genai-cuda.so")
    return folder


def make_onnx_env(project: Path, genai_on_path: Path) -> Path:
    """A real venv at the project's .venv-onnx-cuda whose site-packages also reads genai_on_path."""
    return venv_reading(project / ".venv-onnx-cuda", genai_on_path)


@pytest.fixture(scope="module")
def cuda_project(tmp_path_factory):
    return bake(tmp_path_factory.mktemp("onnx_cuda"), check_environment=False)


def genai_row(project: Path, pythonpath: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    result = subprocess.run(
        [sys.executable, "setup/check_env.py", "--json"], cwd=project, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )
    rows = {row["name"]: row for row in json.loads(result.stdout)["checks"]}
    return rows["onnxruntime-genai"]


def test_requirements_file_pins_a_cuda_13_genai(cuda_project, tmp_path):
    text = (cuda_project / "setup/requirements-onnx-cuda.txt").read_text(encoding="utf-8")
    assert f"onnxruntime-genai-cuda=={RUNTIME_GENAI}" in text.splitlines()
    assert CREATE in text  # the command in the file is the one the errors print
    for name, answers in (("cpu", {"execution_provider": "cpu"}), ("no-onnx", {"onnx_precision": "none"})):
        other = bake(tmp_path / name, check_environment=False, **answers)
        assert not (other / "setup/requirements-onnx-cuda.txt").exists(), name


def test_loader_reason_names_the_missing_library(cuda_project):
    sys.path.insert(0, str(cuda_project / "setup"))
    try:
        import onnx_cuda_env

        assert onnx_cuda_env.load_error(LOADS) is None
        assert "libcudart.so.12" in onnx_cuda_env.load_error(NEEDS_CUDA_12)
        assert onnx_cuda_env.create_command() == CREATE
    finally:
        sys.path.remove(str(cuda_project / "setup"))
        sys.modules.pop("onnx_cuda_env", None)


def test_check_env_sends_onnx_on_cuda_to_its_own_environment(tmp_path):
    project = bake(tmp_path / "project", check_environment=False)
    here = stand_in_genai(tmp_path / "main", BUILD_GENAI, NEEDS_CUDA_12)

    row = genai_row(project, here)
    assert row["status"] == "fail"
    assert row["detail"] == f"{BUILD_GENAI} here: libonnxruntime-genai-cuda.so does not load: {MISSING}"
    assert row["fix"].endswith(
        f"ONNX on CUDA runs in an environment of its own (see setup/requirements-onnx-cuda.txt): {CREATE}"
    )

    make_onnx_env(project, stand_in_genai(tmp_path / "env", RUNTIME_GENAI, LOADS))
    row = genai_row(project, here)
    assert row["status"] == "ok", row
    assert row["detail"].endswith(
        f"ONNX on CUDA runs in .venv-onnx-cuda (onnxruntime-genai {RUNTIME_GENAI}, its CUDA library loads)"
    )

    shutil.rmtree(project / ".venv-onnx-cuda")
    make_onnx_env(project, stand_in_genai(tmp_path / "broken", RUNTIME_GENAI, NEEDS_CUDA_12))
    row = genai_row(project, here)
    assert row["status"] == "fail"
    does_not_load = f"libonnxruntime-genai-cuda.so does not load: {MISSING}"
    assert row["detail"].endswith(f"in .venv-onnx-cuda, {RUNTIME_GENAI}: {does_not_load}")
    assert row["fix"] == f"reinstall .venv-onnx-cuda: {INSTALL}"


def test_chat_runs_onnx_on_cuda_in_the_onnx_environment(tmp_path):
    project = bake(tmp_path / "project", check_environment=False)
    onnx = project / "gen-model" / "onnx"
    onnx.mkdir(parents=True)
    (onnx / "genai_config.json").write_text("{}", encoding="utf-8")
    ask = ["inferences/chat.py", "--backend", "onnx", "--prompt", "hello"]

    # without the environment: one ERROR line with the command that makes it
    here = stand_in_genai(tmp_path / "main", BUILD_GENAI, NEEDS_CUDA_12)
    env = {**os.environ, "PYTHONPATH": str(here)}
    result = subprocess.run([sys.executable, *ask], cwd=project, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"ERROR: onnx on CUDA: libonnxruntime-genai-cuda.so does not load: {MISSING}. ONNX on CUDA runs in an "
        f"environment of its own (see setup/requirements-onnx-cuda.txt): {CREATE}"
    ]

    # with it, chat.py runs again in it, and there its genai is judged (here a broken install: reinstall it)
    make_onnx_env(project, stand_in_genai(tmp_path / "env", RUNTIME_GENAI, NEEDS_CUDA_12))
    result = subprocess.run([sys.executable, *ask], cwd=project, capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "[onnx on CUDA: running in .venv-onnx-cuda]"
    assert lines[1] == f"ERROR: onnx on CUDA: libonnxruntime-genai-cuda.so does not load: {MISSING}. " + (
        f"Reinstall .venv-onnx-cuda: {INSTALL}"
    )
    assert len(lines) == 2
