"""The checks that only full mode runs: they import onnxruntime, onnxruntime-genai, torch and bitsandbytes.

A package can be installed and still fail where it matters (a CUDA provider that does not load, a CPU-only
build), so these import it and use it. The imports stay inside the functions: `--fast` loads this module too,
on interpreters that may have none of these packages.
"""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import warnings
from importlib import metadata

import onnx_cuda_env
import project
from env_checks import (
    check_genai_package,
    check_onnxruntime_package,
    check_packages,
    reinstall,
    torch_cuda_fix,
)
from env_facts import GENAI_PACKAGES, ORT_PACKAGES, Check, Env, compute_label


@contextlib.contextmanager
def _descriptors_redirected(native: list):
    """fd 1 and 2 into a temporary file while the block runs; its text is appended to `native` after."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no descriptors to borrow: Python-level capture only
        saved = None
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for descriptor, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, descriptor)
                os.close(copy)
            sink.seek(0)
            native.append(sink.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def captured_output():
    """Collect what native code writes to fd 1/2 (ORT logs a provider that failed to load only there).

    Also keeps --json's stdout clean of anything an import prints.
    """
    text, native = [], []
    with _descriptors_redirected(native):
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(out):
            yield text
    text.append("".join(native) + out.getvalue())


def _first_line(text: str, *markers: str) -> str:
    """The first log line with the first marker that occurs; its end, where native errors put the cause."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = next((line for marker in markers for line in lines if marker.lower() in line.lower()), "")
    found = found or (lines[-1] if lines else "")
    return found if len(found) <= 200 else "..." + found[-200:]


def error_text(error: BaseException) -> str:
    """The exception's type and first line: native libraries raise messages of many lines."""
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"[:300]


def same_cause(name: str, detail: str, package: Check) -> Check | None:
    """The probe's failure, when the package row already failed for it: one cause, one problem, one fix.

    The row stays, as a skip that points at the package row, where the fix is.
    """
    if package.status != "fail":
        return None
    return Check(name, "skip", f"{detail}; same cause as {package.name}, see its fix")


# ---------------------------------------------------------------- onnxruntime and onnxruntime-genai


def tiny_model_bytes() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Add", ["x", "x"], ["y"])
    graph = helper.make_graph(
        [node],
        "check_env",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    # an old opset and IR version every onnxruntime of the last years loads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


def _ort_cuda_needs() -> str:
    """'CUDA 13 and cuDNN 9', read from the installed onnxruntime-gpu's [cuda,cudnn] extras."""
    try:
        requires = metadata.requires("onnxruntime-gpu") or []
    except Exception:  # noqa: BLE001
        requires = []
    cuda = next((re.search(r"~=\s*(\d+)", r) for r in requires if r.startswith("nvidia-cuda-runtime")), None)
    cudnn = next((re.search(r"~=\s*(\d+)", r) for r in requires if r.startswith("nvidia-cudnn")), None)
    if cuda and cudnn:
        return f"CUDA {cuda.group(1)} and cuDNN {cudnn.group(1)}"
    return "the CUDA and cuDNN versions onnxruntime-gpu was built for"


def probe_onnxruntime(env: Env) -> Check:
    name = "onnxruntime session"
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if env.cuda else ["CPUExecutionProvider"]
    imported = False
    with captured_output() as log, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import onnxruntime as ort

            imported = True
            version = ort.__version__
            available = ort.get_available_providers()
            model = tiny_model_bytes()
            session = ort.InferenceSession(model, providers=[p for p in wanted if p in available])
            import numpy as np

            result = session.run(None, {"x": np.array([1.0, 2.0], dtype=np.float32)})[0]
            got = session.get_providers()
            failure = "" if list(result) == [2.0, 4.0] else f"wrong result {list(result)}"
        except Exception as error:  # noqa: BLE001 - a broken install is a finding
            version, available, got, failure = None, [], [], error_text(error)
    text = "".join(log) + "\n".join(str(w.message) for w in caught)
    package = check_onnxruntime_package(env)
    if version is None:
        detail = f"could not create a session: {failure}"
        # not installed, or two packages' files mixed: the package row says which and how to fix it
        return (not imported and same_cause(name, detail, package)) or Check(name, "fail", detail, project.PIP_INSTALL)
    if failure:
        return Check(name, "fail", f"onnxruntime {version}: {failure}", project.PIP_INSTALL)
    if env.cuda and "CUDAExecutionProvider" not in available:
        detail = f"onnxruntime {version} has no CUDAExecutionProvider (a CPU-only package)"
        return same_cause(name, detail, package) or Check(
            name, "fail", detail, reinstall(env, ORT_PACKAGES, "onnxruntime-gpu")
        )
    if env.cuda and "CUDAExecutionProvider" not in got:
        # onnxruntime-gpu lists the provider even without a GPU; only a real session shows it failed to load
        cause = _first_line(text, "libcudnn", "libcublas", "libcudart", ".so", ".dll", "CUDA", "Failed")
        cause = cause or "no reason logged"
        needs = _ort_cuda_needs()
        pin = env.pins.get("onnxruntime-gpu", version)
        return Check(
            name,
            "fail",
            f"onnxruntime {version}: CUDAExecutionProvider did not load, the session fell back to CPU ({cause})",
            f"onnxruntime-gpu {version} needs {needs} and a working NVIDIA driver: python -m pip install "
            f'"onnxruntime-gpu[cuda,cudnn]=={pin}", or install them system-wide '
            "(onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements)",
        )
    return Check(name, "ok", f"onnxruntime {version}: a real session ran on {', '.join(got)}")


def probe_genai(env: Env) -> Check:
    name = "onnxruntime-genai"
    package = check_genai_package(env)
    with captured_output():
        try:
            import onnxruntime_genai as og

            version = getattr(og, "__version__", "?")
            cuda = bool(og.is_cuda_available()) if hasattr(og, "is_cuda_available") else None
            # the CUDA library loads only when a model runs on CUDA: load it now (setup/onnx_cuda_env.py)
            reason = onnx_cuda_env.unusable_reason() if env.cuda else None
        except Exception as error:  # noqa: BLE001
            detail = f"import failed: {error_text(error)}"
            return same_cause(name, detail, package) or Check(name, "fail", detail, project.PIP_INSTALL)
    if env.cuda and cuda is False:
        detail = f"{version} imported, but this build has no CUDA support"
        return same_cause(name, detail, package) or Check(
            name, "fail", detail, reinstall(env, GENAI_PACKAGES, "onnxruntime-genai-cuda")
        )
    if reason:
        return _onnx_cuda_env_check(name, f"{version} here: {reason}", reason)
    return Check(name, "ok", f"{version} imported" + ("" if cuda is None else f", CUDA {'yes' if cuda else 'no'}"))


# run by .venv-onnx-cuda's Python in setup/: its genai version, CUDA library and why that does not load
ENV_PROBE = (
    "import json, onnx_cuda_env, onnxruntime_genai as og; library = onnx_cuda_env.genai_cuda_library(); "
    "print(json.dumps([og.__version__, library and library.name, onnx_cuda_env.unusable_reason()]))"
)


def _onnx_cuda_env_check(name: str, here: str, reason: str) -> Check:
    """This environment's genai cannot load its CUDA library (setup/onnx_cuda_env.py): judge .venv-onnx-cuda."""
    python = onnx_cuda_env.env_python()
    if python is None:
        return Check(name, "fail", here, onnx_cuda_env.fix(reason))
    reinstall_env = f"reinstall .venv-onnx-cuda: {onnx_cuda_env.install_command()}"
    try:
        result = subprocess.run(
            [str(python), "-c", ENV_PROBE],
            cwd=project.ROOT / "setup",
            env=onnx_cuda_env.child_environ(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        found = json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as error:
        result, found = None, f"{type(error).__name__}: {error}"
    if not isinstance(found, list):
        failure = found or _first_line(result.stderr, "Error", "error") or f"exit code {result.returncode}"
        return Check(name, "fail", f"{here}; .venv-onnx-cuda's Python failed: {failure}", reinstall_env)
    env_version, library, env_reason = found
    if library is None:
        detail = f"{here}; .venv-onnx-cuda has onnxruntime-genai {env_version} without CUDA"
        return Check(name, "fail", detail, reinstall_env)
    if env_reason:
        return Check(name, "fail", f"{here}; in .venv-onnx-cuda, {env_version}: {env_reason}", reinstall_env)
    detail = f"{here}; ONNX on CUDA runs in .venv-onnx-cuda (onnxruntime-genai {env_version}, its CUDA library loads)"
    return Check(name, "ok", detail)


# ---------------------------------------------------------------- training packages


def _torch_facts() -> dict:
    """What torch reports about CUDA and the first GPU; 'error' where the import or a query raised."""
    info: dict = {}
    with captured_output(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import torch

            info.update(version=torch.__version__, cuda_build=torch.version.cuda, available=torch.cuda.is_available())
            if info["available"]:
                info.update(
                    device=torch.cuda.get_device_name(0),
                    capability=tuple(torch.cuda.get_device_capability(0)),
                    free_gib=torch.cuda.mem_get_info(0)[0] / 2**30,
                    total_gib=torch.cuda.mem_get_info(0)[1] / 2**30,
                )
                try:
                    info["bf16"] = torch.cuda.is_bf16_supported(including_emulation=False)
                except TypeError:  # older torch: no emulation argument
                    info["bf16"] = torch.cuda.is_bf16_supported()
        except Exception as error:  # noqa: BLE001
            info["error"] = error_text(error)
    info["warning"] = next((str(w.message).splitlines()[0][:300] for w in caught if "CUDA" in str(w.message)), "")
    return info


def probe_torch(env: Env) -> Check:
    """Also leaves what torch saw in env.torch: the GPU checks fall back on it where nvidia-smi says little."""
    info = env.torch = _torch_facts()
    if "error" in info and "version" not in info:
        return Check("torch", "fail", f"import failed: {info['error']}", project.PIP_INSTALL)
    if "error" in info:
        return Check("torch", "fail", f"{info['version']}: CUDA query failed: {info['error']}", torch_cuda_fix(env))
    build = f"CUDA {info['cuda_build']} build" if info["cuda_build"] else "CPU-only build"
    if info["available"]:
        detail = (
            f"{info['version']} ({build}) sees {info['device']}, {compute_label(info['capability'])}, "
            f"bf16 {'yes' if info['bf16'] else 'no'}, {info['free_gib']:.1f} GiB free"
        )
        return Check("torch", "ok", detail)
    detail = f"{info['version']} ({build}), no GPU visible" + (f": {info['warning']}" if info["warning"] else "")
    if not env.trains_here:
        return Check("torch", "ok", f"{detail}; not needed: no training on this machine")
    if not info["cuda_build"]:
        return Check("torch", "fail", detail, torch_cuda_fix(env))
    if not env.gpus:
        return Check("torch", "fail", detail, "fix the NVIDIA driver first (see nvidia driver)")
    return Check(
        "torch",
        "fail",
        detail,
        f"the driver may be older than CUDA {info['cuda_build']} needs: update the NVIDIA driver, or "
        + torch_cuda_fix(env).replace("python -m pip", "install an older CUDA build: python -m pip", 1),
    )


def probe_bitsandbytes(env: Env) -> Check:
    if env.method != "qlora":
        return Check("bitsandbytes", "skip", f"not used by {env.method}")
    with captured_output():
        try:
            import bitsandbytes

            version = getattr(bitsandbytes, "__version__", "?")
        except Exception as error:  # noqa: BLE001 - bitsandbytes fails in many ways without CUDA
            detail = f"import failed: {error_text(error)}"
            packages = check_packages(env)  # it lists bitsandbytes when that is not installed
            missing = env.installed.get("bitsandbytes") is None and "bitsandbytes" in packages.detail
            return (missing and same_cause("bitsandbytes", detail, packages)) or Check(
                "bitsandbytes", "fail", detail, project.PIP_INSTALL
            )
    return Check("bitsandbytes", "ok", f"{version} imported (QLoRA's 4-bit base model)")
