"""What this machine and this project are, gathered once for every check of setup/check_env.py.

Standard library only: the generation hook runs `check_env.py --fast` with cookiecutter's own interpreter,
which may have no third-party package at all.
"""

import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import project

# A hung driver can keep nvidia-smi waiting for minutes; the hook must not.
SMI_TIMEOUT_S = 5
SMI_FIELDS = ("name", "memory.total", "memory.free", "compute_cap", "driver_version")
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
METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA"}


@dataclass
class Check:
    """One row of the report."""

    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""


def compute_label(capability: tuple[int, int]) -> str:
    return "compute {}.{}".format(*capability)


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
            parts.append(compute_label(self.capability))
        return f"{self.name} ({', '.join(parts)})"


@dataclass
class HostMemory:
    """RAM this process can use: the machine's, or a container's cgroup limit when that is lower."""

    total_gib: float
    available_gib: float | None
    source: str


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
    torch: dict = field(default_factory=dict)  # what the torch probe saw; empty with --fast
    gpus_from_torch: bool = False
    memory: HostMemory | None = None

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

    def present(self, group: tuple[str, ...]) -> list[str]:
        """The packages of the group that are installed, in the group's order."""
        return [package for package in group if self.installed.get(package) is not None]


# ---------------------------------------------------------------- packages and project files


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name) or "unknown"
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a broken dist-info still means "installed"
        return "unknown"


def read_training(config_path: Path, method: str) -> dict:
    """torch_dtype, batch size and the memory-relevant training_args of the LoRA/QLoRA pass; Olive's defaults
    where the config is silent."""
    training = {"torch_dtype": "bfloat16", "batch": 1, "pass_name": method, "error": "", "args": dict()}
    try:
        passes = json.loads(config_path.read_text(encoding="utf-8"))["passes"]
    except Exception as error:  # noqa: BLE001
        training["error"] = f"{config_path.name} unreadable ({type(error).__name__})"
        return training
    for name, spec in passes.items():
        if isinstance(spec, dict) and str(spec.get("type", "")).lower() in ("lora", "qlora"):
            training.update(torch_dtype=spec.get("torch_dtype", "bfloat16"), pass_name=name)
            training["args"] = dict(spec.get("training_args") or {})
            # transformers' own batch size where the pass names none
            training["batch"] = training["args"].get("per_device_train_batch_size", 8)
    return training


# ---------------------------------------------------------------- GPUs through nvidia-smi


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


# ---------------------------------------------------------------- host RAM

GIB = 1024**3
# A container's memory limit is not in /proc/meminfo: it is the cgroup's (v2 memory.max, v1 limit_in_bytes)
CGROUP = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63
# per version: (limit file, usage file, the memory.stat key of page cache the kernel can drop)
CGROUP_FILES = {
    "v2": ("memory.max", "memory.current", "inactive_file"),
    "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}


def _meminfo(path: Path = Path("/proc/meminfo")) -> dict[str, float]:
    values = {}
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[name] = int(fields[0]) * 1024 / GIB  # meminfo counts kB
    return values


def _cgroup_folders() -> list[tuple[str, Path]]:
    """(version, folder) of this process's memory cgroup and of each parent: a parent's limit binds too."""
    try:
        lines = SELF_CGROUP.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    folders = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            version, base = "v2", CGROUP
        elif "memory" in controllers.split(","):
            version, base = "v1", CGROUP / "memory"
        else:
            continue
        own = Path(path.strip().lstrip("/"))  # "/" inside a cgroup namespace: the mount is the process's own
        folders += [(version, base / folder) for folder in (own, *own.parents)]
    return folders


def _cgroup_number(folder: Path, name: str) -> int | None:
    try:
        text = (folder / name).read_text(encoding="ascii").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2 writes "max" for no limit


def _cgroup_limit() -> tuple[float, float] | None:
    """(the tightest memory limit, what is still free under it) in GiB, or None without a limit."""
    tightest = None
    for version, folder in _cgroup_folders():
        limit_file, usage_file, cache_key = CGROUP_FILES[version]
        limit = _cgroup_number(folder, limit_file)
        if limit is None or limit >= UNLIMITED or (tightest and limit >= tightest[0]):
            continue
        used = _cgroup_number(folder, usage_file) or 0
        try:
            stat = dict(line.split() for line in (folder / "memory.stat").read_text(encoding="ascii").splitlines())
            used -= min(int(stat.get(cache_key, 0)), used)  # the kernel drops this page cache before it kills
        except (OSError, ValueError):
            pass
        tightest = (limit, limit - used)
    return None if tightest is None else (tightest[0] / GIB, max(tightest[1], 0) / GIB)


def host_memory() -> HostMemory | None:
    try:
        info = _meminfo()
        memory = HostMemory(info["MemTotal"], info.get("MemAvailable"), "/proc/meminfo")
    except (OSError, KeyError):
        try:  # macOS and other POSIX systems without /proc
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
        except (AttributeError, OSError, ValueError):
            return None  # Windows: the row is skipped
        return HostMemory(total, None, "sysconf")
    cgroup = _cgroup_limit()
    if cgroup and cgroup[0] < memory.total_gib:
        limit, free = cgroup
        available = free if memory.available_gib is None else min(free, memory.available_gib)
        memory = HostMemory(limit, available, "cgroup limit")
    return memory


# ---------------------------------------------------------------- CPU


CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_fields(path: Path) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux; empty elsewhere): every core has the same model."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's name as the benchmarks record it: /proc/cpuinfo's model name, else what the platform says."""
    return _cpuinfo_fields(cpuinfo).get("model name") or platform.processor() or platform.machine()


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's instruction-set flags (x86 "flags", Arm "Features"); empty where /proc/cpuinfo is missing."""
    fields = _cpuinfo_fields(cpuinfo)
    return set(fields.get("flags", fields.get("Features", "")).split())


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask); every logical CPU where there is no such API."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# ---------------------------------------------------------------- all of it


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
        env.pins = project.pins()
    except Exception as error:  # noqa: BLE001
        env.pins_error = f"setup/requirements.txt unreadable ({type(error).__name__})"
    names = set(env.pins) | set(ORT_PACKAGES) | set(GENAI_PACKAGES) | {"torch", "bitsandbytes"}
    env.installed = {name: installed_version(name) for name in sorted(names)}
    env.gpus, env.smi_error, env.smi_fix = query_gpus()
    env.memory = host_memory()
    return env
