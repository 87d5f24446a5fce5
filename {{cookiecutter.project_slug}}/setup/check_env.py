"""Check that this machine can run the project: NVIDIA driver and GPU, packages, ONNX Runtime, disk.

    python setup/check_env.py            # every check; imports torch, onnxruntime, bitsandbytes (seconds)
    python setup/check_env.py --fast     # standard library only, well under a second (the generation hook)
    python setup/check_env.py --json     # one JSON object on stdout: {"ok": ..., "checks": [...]}

One line per check: ✓ ok, ! warning, ✗ problem (its fix on the next line), – not needed for this project.
Exits 1 when there is a problem, else 0. It never raises: a machine with nothing installed gets a report.
"""

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import project  # noqa: E402

# onnxruntime's wheels (1.31 and later) need Python 3.11 or later
MIN_PYTHON = (3, 11)
# A hung driver can keep nvidia-smi waiting for minutes; the hook must not.
SMI_TIMEOUT_S = 5
SMI_FIELDS = ("name", "memory.total", "memory.free", "compute_cap", "driver_version")
# Peak GPU memory measured through Olive on a Phi-3-mini-sized model at batch 1, seq 1024-2048 (GiB).
# Olive loads the base model in float32 for torch_dtype float16 (fp16 mixed precision) and float32.
NEED_GIB = {
    ("lora", "bfloat16"): 10,
    ("lora", "float16"): 18,
    ("lora", "float32"): 18,
    ("qlora", "bfloat16"): 6,
    ("qlora", "float16"): 6,
    ("qlora", "float32"): 6,
}
MEASURED_SEQ_LEN = 2048
# Disk, in multiples of the model's download (an estimate): Olive's cache keeps the merged model and
# fine-tuning/run.py copies it into gen-model/merged; the ONNX model's size follows its precision.
MERGED_FACTOR = 2.0
ONNX_FACTOR = {"int4": 0.5, "fp16": 1.0, "fp32": 2.0, "none": 0.0}
DEFAULT_DOWNLOAD_GB = 7.7  # Phi-3-mini's safetensors
# Used when setup/project.json cannot be read: the template's default answers.
DEFAULT_FACTS = {
    "base_model": "microsoft/Phi-3-mini-4k-instruct",
    "finetune_method": "lora",
    "compute_target": "local",
    "execution_provider": "cuda",
    "onnx_precision": "int4",
    "max_seq_len": 2048,
}
# Each group installs into one import folder: two of a group overwrite each other's files.
ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn")
GENAI_PACKAGES = ("onnxruntime-genai", "onnxruntime-genai-cuda", "onnxruntime-genai-directml")
OWN_ROWS = {"torch", *ORT_PACKAGES, *GENAI_PACKAGES}
METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA"}
PIP_INSTALL = "python -m pip install -r setup/requirements.txt"
ASCII_MARKS = {"ok": "OK", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}
MARKS = {"ok": "\u2713", "warn": "!", "fail": "\u2717", "skip": "\u2013"}


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""


@dataclass
class Gpu:
    name: str
    total_gib: float | None
    free_gib: float | None
    capability: tuple[int, int] | None
    driver: str

    def describe(self) -> str:
        parts = [f"{self.total_gib:.0f} GiB" if self.total_gib is not None else "memory unknown"]
        if self.capability:
            parts.append("compute {}.{}".format(*self.capability))
        return f"{self.name} ({', '.join(parts)})"


@dataclass
class Env:
    """What the checks look at, gathered once."""

    facts: dict
    facts_error: str = ""
    training: dict = field(default_factory=dict)
    pins: dict = field(default_factory=dict)
    pins_error: str = ""
    installed: dict = field(default_factory=dict)
    gpus: list = field(default_factory=list)
    smi_error: str = ""
    smi_fix: str = ""
    torch: dict | None = None  # filled in full mode
    gpus_from_torch: bool = False

    @property
    def method(self) -> str:
        return self.facts.get("finetune_method", "lora")

    @property
    def cuda(self) -> bool:
        return self.facts.get("execution_provider") == "cuda"

    @property
    def trains_here(self) -> bool:
        return self.method in ("lora", "qlora") and self.facts.get("compute_target", "local") == "local"

    def gpu_uses(self) -> list[str]:
        uses = [f"{METHOD_NAMES[self.method]} training on this machine"] if self.trains_here else []
        return uses + (["ONNX on the CUDA provider"] if self.cuda else [])

    def best_gpu(self) -> Gpu | None:
        return max(self.gpus, key=lambda gpu: gpu.free_gib or gpu.total_gib or 0, default=None)


# ---------------------------------------------------------------- gathering (standard library only)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name) or "unknown"
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a broken dist-info still means "installed"
        return "unknown"


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    return pins


def read_training(config_path: Path, method: str) -> dict:
    """torch_dtype and batch size of the LoRA/QLoRA pass; Olive's defaults where the config is silent."""
    training = {"torch_dtype": "bfloat16", "batch": 1, "pass_name": method, "error": ""}
    try:
        passes = json.loads(config_path.read_text(encoding="utf-8"))["passes"]
    except Exception as error:  # noqa: BLE001
        training["error"] = f"{config_path.name} unreadable ({type(error).__name__})"
        return training
    for name, spec in passes.items():
        if isinstance(spec, dict) and str(spec.get("type", "")).lower() in ("lora", "qlora"):
            training.update(torch_dtype=spec.get("torch_dtype", "bfloat16"), pass_name=name)
            training["batch"] = (spec.get("training_args") or {}).get("per_device_train_batch_size", 1)
    return training


def _smi_executable() -> str | None:
    found = shutil.which("nvidia-smi")
    wsl = Path("/usr/lib/wsl/lib/nvidia-smi")  # WSL keeps it off some PATHs
    return found or (str(wsl) if wsl.is_file() else None)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_smi(output: str, fields: tuple[str, ...]) -> list[Gpu]:
    gpus = []
    for line in filter(None, (raw.strip() for raw in output.splitlines())):
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < len(fields):
            raise ValueError(f"unexpected nvidia-smi output: {line[:120]!r}")
        # a GPU name may hold a comma; every other field is the tail
        values = dict(zip(fields[1:], parts[len(parts) - len(fields) + 1 :], strict=True))
        values["name"] = ",".join(parts[: len(parts) - len(fields) + 1])
        total, free = _number(values["memory.total"]), _number(values["memory.free"])
        capability = None
        match = re.fullmatch(r"(\d+)\.(\d+)", values.get("compute_cap", ""))
        if match:
            capability = (int(match.group(1)), int(match.group(2)))
        if total is None and free is None and capability is None and not values["driver_version"][:1].isdigit():
            raise ValueError(f"unexpected nvidia-smi output: {line[:120]!r}")
        gpus.append(
            Gpu(
                values["name"],
                None if total is None else total / 1024,
                None if free is None else free / 1024,
                capability,
                values["driver_version"],
            )
        )
    return gpus


def _smi_fix(message: str) -> str:
    if "version mismatch" in message.lower():
        return "the driver was updated but the old kernel module is still loaded: reboot"
    if "couldn't communicate" in message.lower() or "failed to initialize nvml" in message.lower():
        return (
            "the NVIDIA driver is installed but not running: reboot after a driver or kernel update, or reinstall "
            "the driver for the running kernel; in a container, start it with GPU access (docker run --gpus all)"
        )
    return "run `nvidia-smi` yourself: it must list your GPU; reinstall the NVIDIA driver if it does not"


def query_gpus() -> tuple[list[Gpu], str, str]:
    """GPUs from nvidia-smi, or (no GPUs, what went wrong, the fix)."""
    executable = _smi_executable()
    if not executable:
        fix = (
            "install the NVIDIA driver (https://www.nvidia.com/Download/index.aspx) until `nvidia-smi` lists your "
            "GPU; without a local NVIDIA GPU, generate the project with compute_target=azureml and "
            "execution_provider=cpu"
        )
        return [], "no NVIDIA driver: nvidia-smi not found", fix
    fields = SMI_FIELDS
    for _ in range(2):
        command = [executable, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, errors="replace", timeout=SMI_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            fix = "the driver is in a bad state: reboot, and look for NVRM errors in `dmesg`"
            return [], f"nvidia-smi did not answer in {SMI_TIMEOUT_S} s", fix
        except OSError as error:
            return [], f"nvidia-smi could not run ({error})", _smi_fix("")
        output = (done.stdout + "\n" + done.stderr).strip()
        # drivers before R510 do not know compute_cap: ask again without it
        if done.returncode != 0 and "compute_cap" in output and "compute_cap" in fields:
            fields = tuple(name for name in fields if name != "compute_cap")
            continue
        break
    if done.returncode != 0:
        first = next((line.strip() for line in output.splitlines() if line.strip()), "no output")
        return [], f"nvidia-smi failed (exit {done.returncode}): {first[:200]}", _smi_fix(output)
    try:
        gpus = parse_smi(done.stdout, fields)
    except ValueError as error:
        return [], str(error), _smi_fix("")
    if not gpus:
        return [], "nvidia-smi lists no GPU", _smi_fix("")
    return gpus, "", ""


def gather() -> Env:
    try:
        facts = project.load()
        if not isinstance(facts, dict):
            raise ValueError("not a JSON object")
        env = Env(facts=facts)
    except Exception as error:  # noqa: BLE001 - reported by the project check
        env = Env(facts=dict(DEFAULT_FACTS), facts_error=f"{type(error).__name__}: {error}"[:200])
    env.training = read_training(project.OLIVE_CONFIG, env.method)
    try:
        env.pins = read_pins(project.ROOT / "setup" / "requirements.txt")
    except Exception as error:  # noqa: BLE001
        env.pins_error = f"setup/requirements.txt unreadable ({type(error).__name__})"
    names = set(env.pins) | set(ORT_PACKAGES) | set(GENAI_PACKAGES) | {"torch", "bitsandbytes"}
    env.installed = {name: installed_version(name) for name in sorted(names)}
    env.gpus, env.smi_error, env.smi_fix = query_gpus()
    return env


# ---------------------------------------------------------------- fast checks


def check_python(env: Env) -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        wanted = ".".join(map(str, MIN_PYTHON))
        return Check("python", "fail", f"{version} ({sys.executable})", f"use Python {wanted} or later")
    return Check("python", "ok", f"{version} ({sys.executable})")


def check_project(env: Env) -> Check:
    facts = env.facts
    summary = (
        f"{facts.get('base_model')}, {facts.get('finetune_method')} "
        f"({'Azure ML' if facts.get('compute_target') == 'azureml' else 'this machine'}), "
        f"ONNX {facts.get('onnx_precision')} on {facts.get('execution_provider')}"
    )
    if env.facts_error:
        return Check(
            "project",
            "fail",
            f"setup/project.json unreadable ({env.facts_error}); assuming the template defaults: {summary}",
            "restore setup/project.json from version control, or generate the project again "
            "(its answers are in .cookiecutter.json)",
        )
    return Check("project", "ok", summary)


def check_packages(env: Env) -> Check:
    if env.pins_error:
        return Check("packages", "fail", env.pins_error, "restore setup/requirements.txt from version control")
    # torch and the onnxruntime packages have rows of their own; one missing package, one problem
    pins = {name: pin for name, pin in env.pins.items() if name not in OWN_ROWS}
    missing = [name for name in pins if env.installed.get(name) is None]
    different = [
        f"{name} {env.installed[name]} (pinned {pin})"
        for name, pin in pins.items()
        if env.installed.get(name) is not None and env.installed[name].split("+")[0] != pin
    ]
    if missing:
        return Check(
            "packages", "fail", f"{len(missing)} of {len(pins)} not installed: {', '.join(missing)}", PIP_INSTALL
        )
    if different:
        return Check("packages", "warn", f"not the tested versions: {', '.join(different)}", PIP_INSTALL)
    return Check("packages", "ok", f"the other {len(pins)} pinned packages at the tested versions")


def reinstall(env: Env, group: tuple[str, ...], wanted: str) -> str:
    """Uninstall every package of the group first: removing one deletes files the other one installed."""
    present = [package for package in group if env.installed.get(package) is not None]
    pin = env.pins.get(wanted)
    install = f"python -m pip install {wanted}=={pin}" if pin else f"python -m pip install {wanted}"
    return f"python -m pip uninstall -y {' '.join(present)} && {install}" if present else install


def _exclusive(env: Env, name: str, group: tuple[str, ...], wanted: str) -> Check:
    """Exactly one package of the group, and the one this project's provider needs."""
    present = [package for package in group if env.installed.get(package) is not None]
    listing = ", ".join(f"{package} {env.installed[package]}" for package in present)
    if not present:
        return Check(name, "fail", f"not installed (this project needs {wanted})", PIP_INSTALL)
    if len(present) > 1:
        return Check(
            name,
            "fail",
            f"{listing} installed together: they share one import folder and overwrite each other",
            reinstall(env, group, wanted),
        )
    if present[0] != wanted and env.cuda:
        return Check(
            name,
            "fail",
            f"{listing} installed: it has no CUDA provider, and this project runs ONNX on cuda",
            reinstall(env, group, wanted),
        )
    if present[0] != wanted:
        return Check(name, "warn", f"{listing} installed; setup/requirements.txt has {wanted}", PIP_INSTALL)
    return Check(name, "ok", listing)


def check_onnxruntime_package(env: Env) -> Check:
    return _exclusive(env, "onnxruntime package", ORT_PACKAGES, "onnxruntime-gpu" if env.cuda else "onnxruntime")


def check_genai_package(env: Env) -> Check:
    wanted = "onnxruntime-genai-cuda" if env.cuda else "onnxruntime-genai"
    return _exclusive(env, "onnxruntime-genai package", GENAI_PACKAGES, wanted)


def check_driver(env: Env) -> Check:
    uses = env.gpu_uses()
    if env.gpus and env.gpus_from_torch:
        return Check("nvidia driver", "warn", f"{env.smi_error}, yet torch sees {env.gpus[0].describe()}", env.smi_fix)
    if env.gpus:
        listing = "; ".join(f"GPU {i}: {gpu.describe()}" for i, gpu in enumerate(env.gpus[:4]))
        return Check("nvidia driver", "ok", f"driver {env.gpus[0].driver}, {listing}")
    if not uses:
        return Check("nvidia driver", "skip", f"{env.smi_error}; not needed: no local training, ONNX on cpu")
    return Check("nvidia driver", "fail", f"{env.smi_error}; needed for {' and '.join(uses)}", env.smi_fix)


def _need_gib(env: Env) -> int:
    return NEED_GIB.get((env.method, env.training["torch_dtype"]), NEED_GIB[(env.method, "bfloat16")])


def check_gpu_memory(env: Env) -> Check:
    if not env.trains_here:
        return Check("gpu memory", "skip", "no training on this machine")
    gpu = env.best_gpu()
    if gpu is None:
        return Check("gpu memory", "skip", "no GPU to measure (see nvidia driver)")
    need = _need_gib(env)
    dtype, batch, seq_len = env.training["torch_dtype"], env.training["batch"], env.facts.get("max_seq_len", 0)
    plan = f"{METHOD_NAMES[env.method]} ({dtype}) needs about {need} GiB at batch 1, seq <= {MEASURED_SEQ_LEN}"
    free = gpu.free_gib if gpu.free_gib is not None else gpu.total_gib
    if free is None:
        return Check("gpu memory", "warn", f"{gpu.name}: nvidia-smi reports no memory figures; {plan}")
    have = f"{gpu.name}: {free:.1f} GiB free of {gpu.total_gib or free:.1f} GiB"
    if (gpu.total_gib or free) < need:
        other = "QLoRA (about 6 GiB): generate the project with finetune_method=qlora, or " * (env.method == "lora")
        return Check(
            "gpu memory",
            "fail",
            f"{have}; {plan}",
            f"use {other}a GPU with more memory, or train on Azure ML (compute_target=azureml)",
        )
    if free < need:
        return Check(
            "gpu memory",
            "fail",
            f"{have}; {plan}",
            "other processes hold the GPU's memory: stop them (`nvidia-smi` lists them)",
        )
    if batch != 1 or seq_len > MEASURED_SEQ_LEN:
        return Check(
            "gpu memory",
            "warn",
            f"{have}; {plan}: batch {batch}, seq {seq_len} needs more (activations grow with both)",
            "if training runs out of memory, lower per_device_train_batch_size in fine-tuning/olive-config.json",
        )
    return Check("gpu memory", "ok", f"{have}; {plan}")


def _capability(env: Env, gpu: Gpu | None) -> tuple[int, int] | None:
    if gpu and gpu.capability:
        return gpu.capability
    return (env.torch or {}).get("capability")


def check_bf16(env: Env) -> Check:
    name = "bf16 (compute capability)"
    if not env.trains_here:
        return Check(name, "skip", "no training on this machine")
    gpu = env.best_gpu()
    capability = _capability(env, gpu)
    dtype, pass_name = env.training["torch_dtype"], env.training["pass_name"]
    key = f"passes.{pass_name}.torch_dtype in fine-tuning/olive-config.json"
    if capability is None:
        if gpu is None and not (env.torch or {}).get("capability"):
            return Check(name, "skip", "no GPU to check (see nvidia driver)")
        return Check(
            name,
            "warn",
            f"compute capability unknown (old driver); {key} is {dtype!r}",
            "bf16 needs compute capability 8.0 (Ampere) or later; look your GPU up on "
            "https://developer.nvidia.com/cuda-gpus",
        )
    shown = "compute {}.{}".format(*capability)
    bf16 = capability >= (8, 0) and (env.torch or {}).get("bf16") is not False
    if dtype == "bfloat16" and not bf16:
        total = gpu.total_gib if gpu else None
        if env.method == "lora" and total is not None and total < NEED_GIB[("lora", "float32")]:
            fix = (
                "this GPU has no bf16 and too little memory for LoRA in float32 (about 18 GiB): generate the "
                'project with finetune_method=qlora and set passes.qlora.torch_dtype to "float16", or train on '
                "Azure ML (compute_target=azureml)"
            )
        elif env.method == "lora":
            fix = (
                f'set {key} to "float16" (Olive then loads the base model in float32 and trains in fp16 mixed '
                f"precision: about {NEED_GIB[('lora', 'float16')]} GiB of GPU memory)"
            )
        else:
            fix = f'set {key} to "float16" (fp16 mixed precision; the 4-bit layers stay 4-bit)'
        return Check(name, "fail", f"{shown}: no bf16 (needs 8.0 or later); {key} is 'bfloat16'", fix)
    if dtype != "bfloat16" and bf16 and _need_gib(env) > NEED_GIB[(env.method, "bfloat16")]:
        return Check(
            name,
            "warn",
            f"{shown} supports bf16, but {key} is {dtype!r}",
            f'set it to "bfloat16": about {NEED_GIB[(env.method, "bfloat16")]} GiB instead of {_need_gib(env)} GiB',
        )
    note = f" ({env.training['error']}: assumed)" if env.training["error"] else ""
    return Check(name, "ok", f"{shown}; {key} is {dtype!r}{note}")


def disk_need_gb(facts: dict, model_present: bool) -> float:
    download = float(facts.get("download_gb", DEFAULT_DOWNLOAD_GB))
    factor = 0.0 if model_present else 1.0
    if facts.get("finetune_method") in ("lora", "qlora"):
        factor += MERGED_FACTOR
    factor += ONNX_FACTOR.get(facts.get("onnx_precision", "int4"), 1.0)
    return download * factor


def check_disk(env: Env) -> Check:
    model_dir = env.facts.get("model_dir")
    present = bool(model_dir) and (project.ROOT / model_dir / "config.json").is_file()
    need = disk_need_gb(env.facts, present)
    free = shutil.disk_usage(project.ROOT).free / 1e9
    what = "merged model, ONNX model" if present else "model download, merged model, ONNX model"
    detail = f"{free:.0f} GB free at {project.ROOT}; about {need:.0f} GB needed ({what}; an estimate)"
    if free < need:
        return Check("disk", "fail", detail, f"free {need - free:.0f} GB there, or move the project to a larger disk")
    return Check("disk", "ok", detail)


def check_torch_package(env: Env) -> Check:
    version = env.installed.get("torch")
    if version is None:
        return Check("torch", "fail", "not installed", PIP_INSTALL)
    if "+cpu" in version and env.trains_here:
        detail = f"{version} is a CPU-only build; training needs a CUDA build"
        return Check("torch", "fail", detail, _torch_cuda_fix(env))
    return Check("torch", "ok", f"{version} installed (its CUDA is checked without --fast)")


def _torch_cuda_fix(env: Env) -> str:
    pin = env.pins.get("torch", "<version>")
    return (
        f"python -m pip install --force-reinstall torch=={pin} --index-url https://download.pytorch.org/whl/cuXXX "
        "(the cuXXX your driver supports: pytorch.org, 'previous versions')"
    )


FAST_CHECKS = (
    check_python,
    check_project,
    check_packages,
    check_onnxruntime_package,
    check_genai_package,
    check_torch_package,
    check_driver,
    check_gpu_memory,
    check_bf16,
    check_disk,
)


# ---------------------------------------------------------------- full mode: real imports


@contextlib.contextmanager
def captured_output():
    """Collect what native code writes to fd 1/2 (ORT logs a provider that failed to load only there).

    Also keeps --json's stdout clean of anything an import prints.
    """
    text = []
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(out):
            yield text
        text.append(out.getvalue())
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(out):
                yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            text.append(sink.read().decode("utf-8", "replace") + out.getvalue())


def _first_line(text: str, *markers: str) -> str:
    """The first log line with the first marker that occurs; its end, where native errors put the cause."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = next((line for marker in markers for line in lines if marker.lower() in line.lower()), "")
    found = found or (lines[-1] if lines else "")
    return found if len(found) <= 200 else "..." + found[-200:]


def _error(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"[:300]


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
    with captured_output() as log, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import onnxruntime as ort

            version = ort.__version__
            available = ort.get_available_providers()
            model = tiny_model_bytes()
            session = ort.InferenceSession(model, providers=[p for p in wanted if p in available])
            import numpy as np

            result = session.run(None, {"x": np.array([1.0, 2.0], dtype=np.float32)})[0]
            got = session.get_providers()
            failure = "" if list(result) == [2.0, 4.0] else f"wrong result {list(result)}"
        except Exception as error:  # noqa: BLE001 - a broken install is a finding
            version, available, got, failure = None, [], [], _error(error)
    text = "".join(log) + "\n".join(str(w.message) for w in caught)
    if version is None:
        return Check(name, "fail", f"could not create a session: {failure}", PIP_INSTALL)
    if failure:
        return Check(name, "fail", f"onnxruntime {version}: {failure}", PIP_INSTALL)
    if env.cuda and "CUDAExecutionProvider" not in available:
        return Check(
            name,
            "fail",
            f"onnxruntime {version} has no CUDAExecutionProvider (a CPU-only package)",
            reinstall(env, ORT_PACKAGES, "onnxruntime-gpu"),
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
    with captured_output():
        try:
            import onnxruntime_genai as og

            version = getattr(og, "__version__", "?")
            cuda = bool(og.is_cuda_available()) if hasattr(og, "is_cuda_available") else None
        except Exception as error:  # noqa: BLE001
            return Check(name, "fail", f"import failed: {_error(error)}", PIP_INSTALL)
    if env.cuda and cuda is False:
        return Check(
            name,
            "fail",
            f"{version} imported, but this build has no CUDA support",
            reinstall(env, GENAI_PACKAGES, "onnxruntime-genai-cuda"),
        )
    return Check(name, "ok", f"{version} imported" + ("" if cuda is None else f", CUDA {'yes' if cuda else 'no'}"))


def probe_torch(env: Env) -> Check:
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
            info["error"] = _error(error)
    info["warning"] = next((str(w.message).splitlines()[0][:300] for w in caught if "CUDA" in str(w.message)), "")
    env.torch = info
    if "error" in info and "version" not in info:
        return Check("torch", "fail", f"import failed: {info['error']}", PIP_INSTALL)
    if "error" in info:
        return Check("torch", "fail", f"{info['version']}: CUDA query failed: {info['error']}", _torch_cuda_fix(env))
    build = f"CUDA {info['cuda_build']} build" if info["cuda_build"] else "CPU-only build"
    if info["available"]:
        detail = (
            f"{info['version']} ({build}) sees {info['device']}, compute {info['capability'][0]}."
            f"{info['capability'][1]}, bf16 {'yes' if info['bf16'] else 'no'}, {info['free_gib']:.1f} GiB free"
        )
        return Check("torch", "ok", detail)
    detail = f"{info['version']} ({build}), no GPU visible" + (f": {info['warning']}" if info["warning"] else "")
    if not env.trains_here:
        return Check("torch", "ok", f"{detail}; not needed: no training on this machine")
    if not info["cuda_build"]:
        return Check("torch", "fail", detail, _torch_cuda_fix(env))
    if not env.gpus:
        return Check("torch", "fail", detail, "fix the NVIDIA driver first (see nvidia driver)")
    return Check(
        "torch",
        "fail",
        detail,
        f"the driver may be older than CUDA {info['cuda_build']} needs: update the NVIDIA driver, or "
        + _torch_cuda_fix(env).replace("python -m pip", "install an older CUDA build: python -m pip", 1),
    )


def probe_bitsandbytes(env: Env) -> Check:
    if env.method != "qlora":
        return Check("bitsandbytes", "skip", f"not used by {env.method}")
    with captured_output():
        try:
            import bitsandbytes

            version = getattr(bitsandbytes, "__version__", "?")
        except Exception as error:  # noqa: BLE001 - bitsandbytes fails in many ways without CUDA
            return Check("bitsandbytes", "fail", f"import failed: {_error(error)}", PIP_INSTALL)
    return Check("bitsandbytes", "ok", f"{version} imported (QLoRA's 4-bit base model)")


def _safe(check, env: Env) -> Check:
    try:
        return check(env)
    except Exception as error:  # noqa: BLE001 - one broken check must not hide the others
        name = re.sub(r"^(check|probe)_", "", check.__name__).replace("_", " ")
        return Check(name, "fail", f"the check itself failed: {_error(error)}", "report this with the output above")


def run_checks(fast: bool) -> tuple[Env, list[Check]]:
    env = gather()
    if fast:
        return env, [_safe(check, env) for check in FAST_CHECKS]
    # ORT and genai first: torch loads its own CUDA and cuDNN libraries into this process, which would
    # hide a missing libcudnn from the session check (inferences/chat.py runs ONNX without torch)
    late = [_safe(probe_onnxruntime, env), _safe(probe_genai, env)]
    torch_check = _safe(probe_torch, env)
    late.append(_safe(probe_bitsandbytes, env))
    info = env.torch or {}
    if not env.gpus and info.get("available"):
        # nvidia-smi failed or is missing, yet torch reaches a GPU: judge memory and bf16 on that
        env.gpus = [Gpu(info["device"], info["total_gib"], info["free_gib"], info["capability"], "unknown")]
        env.gpus_from_torch = True
    checks = [torch_check if check is check_torch_package else _safe(check, env) for check in FAST_CHECKS]
    return env, checks + late


# ---------------------------------------------------------------- report


def plan(env: Env) -> str:
    facts, steps = env.facts, []
    if env.method in METHOD_NAMES:
        where = "" if env.trains_here else " (on Azure ML)"
        steps.append(f"{METHOD_NAMES[env.method]} training of {facts.get('base_model')}{where}")
    if facts.get("onnx_precision", "none") != "none":
        steps.append(f"the {facts.get('onnx_precision')} ONNX model on {facts.get('execution_provider')}")
    return ", ".join(steps) or "nothing to run"


def summary(checks: list[Check], env: Env, fast: bool) -> str:
    problems = sum(check.status == "fail" for check in checks)
    warned = sum(check.status == "warn" for check in checks)
    note = f", {warned} warning{'s' if warned != 1 else ''}" if warned else ""
    tail = " (--fast: torch, onnxruntime, bitsandbytes not imported; run `python setup/check_env.py`)" * fast
    if problems:
        return f"{problems} problem{'s' if problems != 1 else ''}{note}: fix each one above, then run this again.{tail}"
    return f"Ready{note}: {plan(env)}.{tail}"


def _marks(stream) -> dict:
    try:
        "".join(MARKS.values()).encode(stream.encoding or "ascii")
        return MARKS
    except (LookupError, UnicodeEncodeError):
        return ASCII_MARKS


def render(checks: list[Check], env: Env, fast: bool, marks: dict) -> str:
    width = max(len(check.name) for check in checks)
    mark_width = max(len(mark) for mark in marks.values())
    lines = [f"Environment check{' (--fast)' if fast else ''} for {project.ROOT.name}"]
    for check in checks:
        lines.append(f"  {marks[check.status].ljust(mark_width)}  {check.name.ljust(width)}  {check.detail}")
        if check.fix and check.status in ("fail", "warn"):
            lines.append(f"  {' ' * mark_width}  {' ' * width}  Fix: {check.fix}")
    lines.append(summary(checks, env, fast))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="standard library only: no torch/onnxruntime imports")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")  # a GPU name or path the console cannot show is no crash
    env, checks = run_checks(args.fast)
    ok = not any(check.status == "fail" for check in checks)
    if args.json:
        payload = {
            "ok": ok,
            "mode": "fast" if args.fast else "full",
            "summary": summary(checks, env, args.fast),
            "checks": [asdict(check) for check in checks],
        }
        text = json.dumps(payload, indent=2, ensure_ascii=True)
    else:
        text = render(checks, env, args.fast, _marks(sys.stdout))
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `| head`: the reader left, nothing to report to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
