"""ONNX inference on a CUDA GPU runs in an environment of its own: .venv-onnx-cuda.

olive-ai's ModelBuilder needs the onnxruntime-genai that setup/requirements.txt pins, and that genai's CUDA
library was built for CUDA 12: it links libcublas.so.12, libcudart.so.12 and libcufft.so.11. The project's
torch and onnxruntime-gpu are CUDA 13 builds, which bring none of those. So the main environment builds the
ONNX model, and setup/requirements-onnx-cuda.txt pins, for a second small environment without torch, a genai
built for CUDA 13 that reads those models. inferences/chat.py and inferences/benchmark.py use it for the onnx
backend on CUDA when it exists; setup/check_env.py says whether it is needed and whether it works.
"""

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

import project

ENV_DIR = project.ROOT / ".venv-onnx-cuda"
REQUIREMENTS = "setup/requirements-onnx-cuda.txt"
# genai's CUDA library, as each platform names it
LIBRARIES = ("libonnxruntime-genai-cuda.so", "onnxruntime-genai-cuda.dll")


def env_python() -> Path | None:
    """The ONNX-on-CUDA environment's interpreter, or None when that environment was not made."""
    candidate = ENV_DIR / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    return candidate if candidate.is_file() else None


def running_in() -> bool:
    return Path(sys.prefix).resolve() == ENV_DIR.resolve()


def child_environ() -> dict:
    """The environment for a process of .venv-onnx-cuda's Python: without PYTHONPATH and PYTHONHOME, which
    would put this environment's packages (its CUDA 12 genai) ahead of that environment's own."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}


def install_command() -> str:
    python = r".venv-onnx-cuda\Scripts\python" if os.name == "nt" else ".venv-onnx-cuda/bin/python"
    return f"{python} -m pip install -r {REQUIREMENTS}"


def create_command() -> str:
    return f"python -m venv .venv-onnx-cuda && {install_command()}"


def genai_cuda_library() -> Path | None:
    """The CUDA library of the onnxruntime_genai package this interpreter imports (found without importing it:
    the import itself loads no CUDA), or None when the package is missing or has no CUDA library."""
    spec = importlib.util.find_spec("onnxruntime_genai")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return next((folder / name for name in LIBRARIES if (folder / name).is_file()), None)


def preload_cuda_libraries() -> None:
    """Load the CUDA libraries onnxruntime-gpu's [cuda,cudnn] extras installed: nothing else puts them on the
    loader's path where torch is not imported (onnxruntime.preload_dlls, onnxruntime 1.21 and later)."""
    try:
        import onnxruntime

        onnxruntime.preload_dlls()
    except Exception:  # noqa: BLE001 - a CPU-only onnxruntime, or libraries installed system-wide instead
        pass


def load_error(library: Path) -> str | None:
    """None when the dynamic loader loads the library and everything it links; else the loader's reason."""
    try:
        ctypes.CDLL(str(library))
    except OSError as error:
        return (str(error).strip().splitlines() or [type(error).__name__])[0]
    return None


def unusable_reason() -> str | None:
    """Why this interpreter cannot run genai on CUDA (its CUDA library does not load), or None when it can or
    when there is no genai CUDA library to judge (a CPU package: genai itself then says it lacks CUDA)."""
    library = genai_cuda_library()
    if library is None:
        return None
    preload_cuda_libraries()
    error = load_error(library)
    return f"{library.name} does not load: {error}" if error else None


def fix(reason: str) -> str:
    """What to tell a user whose interpreter cannot run genai on CUDA."""
    if env_python() and not running_in():
        return f"{reason}. Run it with .venv-onnx-cuda's Python, which this project made for ONNX on CUDA"
    if running_in():
        return f"{reason}. Reinstall .venv-onnx-cuda: {install_command()}"
    return f"{reason}. ONNX on CUDA runs in an environment of its own (see {REQUIREMENTS}): {create_command()}"
