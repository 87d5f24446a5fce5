"""The checks of `check_env.py --fast`: judgements on the gathered facts, each with its fix.

Standard library only, like env_facts.py: they import nothing they check.
"""

import shutil
import sys

import project
from env_facts import GENAI_PACKAGES, METHOD_NAMES, ORT_PACKAGES, Check, Env, Gpu, compute_label, installed_version

# onnxruntime's wheels (1.31 and later) need Python 3.11 or later
MIN_PYTHON = (3, 11)
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
# fine-tuning/run.py copies it into gen-model/merged; the ONNX model stays in the cache too when Olive copies it
# to gen-model/onnx, and its size follows its precision (int4 measured: 2.72 GB from a 7.7 GB download, after
# a 2.29 GB 4-bit PyTorch model from the Rtn pass).
MERGED_FACTOR = 2.0
ONNX_FACTOR = {"int4": 0.35, "fp16": 1.0, "fp32": 2.0, "none": 0.0}
QUANTIZED_FACTOR = {"int4": 0.3}
DEFAULT_DOWNLOAD_GB = 7.7  # Phi-3-mini's safetensors
# Peak host RAM (GiB, the process's peak RSS) of the workflow's heaviest steps, measured with /usr/bin/time on
# a 3.82 B Phi-3-mini-shaped model, olive-ai 0.13.0, onnxruntime-genai 0.14.1 (docs/benchmarks.md). int4: the
# whole LoRA -> merge -> Rtn -> ModelBuilder `olive run`; int4_build: Rtn -> ModelBuilder alone (a convert-only
# project); quantizing the builder's fp32 graph instead was killed at 24.2 GB. merge, fp16, fp32: that step alone.
HOST_RAM_GIB = {"merge": 7.7, "int4": 11.4, "int4_build": 10.9, "fp16": 9.5, "fp32": 16.3}
# torch and the onnxruntime packages have rows of their own; one missing package, one problem
OWN_ROWS = {"torch", "liger-kernel", *ORT_PACKAGES, *GENAI_PACKAGES}


# ---------------------------------------------------------------- fixes the full-mode probes give too


def reinstall(env: Env, group: tuple[str, ...], wanted: str) -> str:
    """Uninstall every package of the group first: removing one deletes files the other one installed."""
    present = env.present(group)
    pin = env.pins.get(wanted)
    install = f"python -m pip install {wanted}=={pin}" if pin else f"python -m pip install {wanted}"
    return f"python -m pip uninstall -y {' '.join(present)} && {install}" if present else install


def torch_cuda_fix(env: Env) -> str:
    pin = env.pins.get("torch", "<version>")
    return (
        f"python -m pip install --force-reinstall torch=={pin} --index-url https://download.pytorch.org/whl/cuXXX "
        "(the cuXXX your driver supports: pytorch.org, 'previous versions')"
    )


# ---------------------------------------------------------------- interpreter, project, packages


def check_python(env: Env) -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    detail = f"{version} ({sys.executable})"
    if sys.version_info[:2] < MIN_PYTHON:
        wanted = ".".join(map(str, MIN_PYTHON))
        return Check("python", "fail", detail, f"use Python {wanted} or later")
    return Check("python", "ok", detail)


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
    pins = {name: pin for name, pin in env.pins.items() if name not in OWN_ROWS}
    missing = [name for name in pins if env.installed.get(name) is None]
    different = [
        f"{name} {env.installed[name]} (pinned {pin})"
        for name, pin in pins.items()
        if env.installed.get(name) is not None and env.installed[name].split("+")[0] != pin
    ]
    if missing:
        return Check(
            "packages",
            "fail",
            f"{len(missing)} of {len(pins)} not installed: {', '.join(missing)}",
            project.PIP_INSTALL,
        )
    if different:
        return Check("packages", "warn", f"not the tested versions: {', '.join(different)}", project.PIP_INSTALL)
    return Check("packages", "ok", f"the other {len(pins)} pinned packages at the tested versions")


def _exclusive(env: Env, name: str, group: tuple[str, ...], wanted: str) -> Check:
    """Exactly one package of the group, and the one this project's provider needs."""
    present = env.present(group)
    listing = ", ".join(f"{package} {env.installed[package]}" for package in present)
    if not present:
        return Check(name, "fail", f"not installed (this project needs {wanted})", project.PIP_INSTALL)
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
        return Check(name, "warn", f"{listing} installed; setup/requirements.txt has {wanted}", project.PIP_INSTALL)
    return Check(name, "ok", listing)


def check_onnxruntime_package(env: Env) -> Check:
    return _exclusive(env, "onnxruntime package", ORT_PACKAGES, "onnxruntime-gpu" if env.cuda else "onnxruntime")


def check_genai_package(env: Env) -> Check:
    wanted = "onnxruntime-genai-cuda" if env.cuda else "onnxruntime-genai"
    return _exclusive(env, "onnxruntime-genai package", GENAI_PACKAGES, wanted)


def check_torch_package(env: Env) -> Check:
    version = env.installed.get("torch")
    if version is None:
        return Check("torch", "fail", "not installed", project.PIP_INSTALL)
    if "+cpu" in version and env.trains_here:
        detail = f"{version} is a CPU-only build; training needs a CUDA build"
        return Check("torch", "fail", detail, torch_cuda_fix(env))
    return Check("torch", "ok", f"{version} installed (its CUDA is checked without --fast)")


# ---------------------------------------------------------------- driver and GPU


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


# what a CUDA context holds on the card beside the allocator's peak that the profiles record
CUDA_CONTEXT_GIB = 0.5
# the training_args a profile sets, with the value a config that leaves one out trains with (Olive's
# gradient_checkpointing, transformers' batch size)
PROFILE_DEFAULTS = {
    "per_device_train_batch_size": 8,
    "gradient_checkpointing": True,
    "bf16": False,
    "use_liger_kernel": False,
}


def _profiles(env: Env, method: str | None = None) -> dict:
    """The measured gpu_memory profiles of this project's method (or another), by name."""
    return (env.facts.get("training_profiles") or {}).get(method or env.method) or {}


def _profile_in_use(env: Env) -> tuple[str, dict] | None:
    """The gpu_memory profile whose settings fine-tuning/olive-config.json trains with (the generated one, or a
    row copied from the README), if any."""
    if env.training["torch_dtype"] != "bfloat16":
        return None
    args = env.training.get("args", {})
    for name, profile in _profiles(env).items():
        if all(args.get(key, default) == profile[key] for key, default in PROFILE_DEFAULTS.items()):
            return name, profile
    return None


def _need(profile: dict) -> float:
    return round(profile["peak_gib"] + CUDA_CONTEXT_GIB, 1)


def _fastest_profile(env: Env, total_gib: float, gpu: Gpu | None) -> tuple[str, dict] | None:
    """The measured profile of this method that trains fastest within total_gib of GPU memory; on a GPU known
    to lack bf16, only the profiles without bf16 autocast (the others would fail the bf16 check)."""
    no_bf16 = _lacks_bf16(env, gpu)
    fits = [
        (name, found)
        for name, found in _profiles(env).items()
        if _need(found) <= total_gib and not (no_bf16 and found["bf16"])
    ]
    return max(fits, key=lambda item: item[1]["tokens_per_s"], default=None)


def _profile_hint(env: Env, current: dict, total_gib: float, gpu: Gpu) -> str:
    """When this GPU fits a faster profile than the one in use: which, and how much faster (measured)."""
    best = _fastest_profile(env, total_gib, gpu)
    if best is None or best[1]["tokens_per_s"] <= current["tokens_per_s"]:
        return ""
    name, found = best
    return (
        f"; this GPU fits the {name} profile: {found['tokens_per_s']:,} tokens/s against "
        f"{current['tokens_per_s']:,} (generate the project with gpu_memory={name}, or copy its row from the README)"
    )


def _measured_shape(env: Env) -> bool:
    """The profiles were measured on this base model's shape (vocabulary and layers): their peaks hold for it."""
    return env.facts.get("base_model") in (env.facts.get("training_profiles") or {}).get("same_shape", ())


def check_gpu_memory(env: Env) -> Check:
    if not env.trains_here:
        return Check("gpu memory", "skip", "no training on this machine")
    gpu = env.best_gpu()
    if gpu is None:
        return Check("gpu memory", "skip", "no GPU to measure (see nvidia driver)")
    dtype, batch, seq_len = env.training["torch_dtype"], env.training["batch"], env.facts.get("max_seq_len", 0)
    in_use = _profile_in_use(env)
    if in_use is not None:
        name, profile = in_use
        need = _need(profile)
        plan = f"the {name} profile (batch {batch}) needs about {need} GiB at seq <= {MEASURED_SEQ_LEN}"
    else:
        need = _need_gib(env)
        plan = f"{METHOD_NAMES[env.method]} ({dtype}) needs about {need} GiB at batch 1, seq <= {MEASURED_SEQ_LEN}"
    free = gpu.free_gib if gpu.free_gib is not None else gpu.total_gib
    if free is None:
        return Check("gpu memory", "warn", f"{gpu.name}: nvidia-smi reports no memory figures; {plan}")
    total = gpu.total_gib or free
    detail = f"{gpu.name}: {free:.1f} GiB free of {total:.1f} GiB; {plan}"
    if total < need:
        smaller = _fastest_profile(env, total, gpu) if in_use is not None else None
        if smaller is not None:
            fix = f"generate the project with gpu_memory={smaller[0]} (about {_need(smaller[1])} GiB), or "
        elif env.method == "lora":
            small = _need(_profiles(env, "qlora")["8gb"])
            fix = f"use QLoRA: generate the project with finetune_method=qlora gpu_memory=8gb (about {small} GiB), or "
        else:
            fix = "use a GPU with more memory, or "
        return Check("gpu memory", "fail", detail, fix + "train on Azure ML (compute_target=azureml)")
    if free < need:
        fix = "other processes hold the GPU's memory: stop them (`nvidia-smi` lists them)"
        return Check("gpu memory", "fail", detail, fix)
    if in_use is not None and not _measured_shape(env):
        return Check(
            "gpu memory",
            "warn",
            f"{detail}, measured on {env.facts['training_profiles'].get('measured_model')}; "
            f"{env.facts.get('base_model')} differs in shape (vocabulary, attention) and needs more",
            "if training runs out of memory, lower per_device_train_batch_size (raise gradient_accumulation_steps to "
            "match) or set gradient_checkpointing to true in fine-tuning/olive-config.json",
        )
    if (in_use is None and batch != 1) or seq_len > MEASURED_SEQ_LEN:
        return Check(
            "gpu memory",
            "warn",
            f"{detail}: batch {batch}, seq {seq_len} needs more (activations grow with both)",
            "if training runs out of memory, lower per_device_train_batch_size in fine-tuning/olive-config.json",
        )
    return Check("gpu memory", "ok", detail + (_profile_hint(env, in_use[1], total, gpu) if in_use else ""))


def _capability(env: Env, gpu: Gpu | None) -> tuple[int, int] | None:
    """nvidia-smi's figure, else the one torch read in full mode (old drivers do not report it)."""
    if gpu and gpu.capability:
        return gpu.capability
    return env.torch.get("capability")


def _has_bf16(env: Env, capability: tuple[int, int]) -> bool:
    return capability >= (8, 0) and env.torch.get("bf16") is not False


def _lacks_bf16(env: Env, gpu: Gpu | None) -> bool:
    """Known to have no bf16 (an unknown compute capability is not taken as a no)."""
    capability = _capability(env, gpu)
    return capability is not None and not _has_bf16(env, capability)


def check_bf16(env: Env) -> Check:
    name = "bf16 (compute capability)"
    if not env.trains_here:
        return Check(name, "skip", "no training on this machine")
    gpu = env.best_gpu()
    capability = _capability(env, gpu)
    dtype, pass_name = env.training["torch_dtype"], env.training["pass_name"]
    key = f"passes.{pass_name}.torch_dtype in fine-tuning/olive-config.json"
    if capability is None:
        if gpu is None:
            return Check(name, "skip", "no GPU to check (see nvidia driver)")
        return Check(
            name,
            "warn",
            f"compute capability unknown (old driver); {key} is {dtype!r}",
            "bf16 needs compute capability 8.0 (Ampere) or later; look your GPU up on "
            "https://developer.nvidia.com/cuda-gpus",
        )
    shown = compute_label(capability)
    bf16 = _has_bf16(env, capability)
    bf16_need = NEED_GIB[(env.method, "bfloat16")]
    autocast = env.training.get("args", {}).get("bf16") is True
    autocast_key = f'"bf16": true from passes.{pass_name}.training_args'
    if dtype == "bfloat16" and not bf16:
        total = gpu.total_gib if gpu else None
        if env.method == "lora" and total is not None and total < NEED_GIB[("lora", "float32")]:
            # the 8gb QLoRA profile is the one without bf16 autocast
            fix = (
                "this GPU has no bf16 and too little memory for LoRA in float32 (about 18 GiB): generate the "
                'project with finetune_method=qlora gpu_memory=8gb and set passes.qlora.torch_dtype to "float16", '
                "or train on Azure ML (compute_target=azureml)"
            )
        elif env.method == "lora":
            fix = (
                f'set {key} to "float16"{f" and remove {autocast_key}" if autocast else ""} (Olive then loads the '
                "base model in float32 and trains in fp16 mixed precision: about "
                f"{NEED_GIB[('lora', 'float16')]} GiB of GPU memory)"
            )
        else:
            fix = f'set {key} to "float16" (fp16 mixed precision; the 4-bit layers stay 4-bit)'
            fix += f", and remove {autocast_key}" if autocast else ""
        return Check(name, "fail", f"{shown}: no bf16 (needs 8.0 or later); {key} is 'bfloat16'", fix)
    if autocast and not bf16:
        return Check(
            name,
            "fail",
            f"{shown}: no bf16 (needs 8.0 or later); {autocast_key} is true",
            f"remove {autocast_key} (the gpu_memory profile's bf16 autocast)",
        )
    if dtype != "bfloat16" and bf16 and _need_gib(env) > bf16_need:
        return Check(
            name,
            "warn",
            f"{shown} supports bf16, but {key} is {dtype!r}",
            f'set it to "bfloat16": about {bf16_need} GiB instead of {_need_gib(env)} GiB',
        )
    note = f" ({env.training['error']}: assumed)" if env.training["error"] else ""
    return Check(name, "ok", f"{shown}; {key} is {dtype!r}{note}")


def check_liger(env: Env) -> Check:
    """use_liger_kernel (the 40gb profile's): transformers imports liger-kernel only when the Trainer starts, after
    the model has loaded, and its Triton kernels run on Linux with a CUDA GPU only."""
    name = "liger kernels"
    if not env.trains_here or env.training.get("args", {}).get("use_liger_kernel") is not True:
        return Check(name, "skip", "the training config does not use them")
    key = f"passes.{env.training['pass_name']}.training_args.use_liger_kernel"
    if not sys.platform.startswith("linux"):
        return Check(
            name,
            "fail",
            f"{key} is true: Liger's Triton kernels run on Linux only",
            f"set {key} to false in fine-tuning/olive-config.json and lower per_device_train_batch_size to 2 (with "
            "gradient_accumulation_steps 2): batch 4 without Liger peaked at 44.9 GiB on an H200, batch 2 at 26.3",
        )
    version = installed_version("liger-kernel")
    if version is None:
        pinned = "liger-kernel" in env.pins
        return Check(
            name,
            "fail",
            f"{key} is true, but liger-kernel is not installed",
            project.PIP_INSTALL
            if pinned
            else "python -m pip install liger-kernel (and add it to setup/requirements.txt)",
        )
    return Check(name, "ok", f"liger-kernel {version} for {key}")


# ---------------------------------------------------------------- host RAM


def host_ram_steps(facts: dict) -> list[tuple[str, float]]:
    """The heavy steps this project's workflow runs, with their measured peak RAM in GiB."""
    steps = []
    trains = facts.get("finetune_method") in ("lora", "qlora")
    if trains:
        steps.append(("merging the adapter", HOST_RAM_GIB["merge"]))
    precision = facts.get("onnx_precision", "int4")
    if precision == "int4" and trains:
        # measured as one run: training's memory is not all given back before the ONNX passes
        steps.append(("the int4 workflow (training to the ONNX model, one olive run)", HOST_RAM_GIB["int4"]))
    elif precision == "int4":
        steps.append(("building the int4 ONNX model", HOST_RAM_GIB["int4_build"]))
    elif precision in HOST_RAM_GIB:
        steps.append((f"building the {precision} ONNX model", HOST_RAM_GIB[precision]))
    return steps


def check_host_ram(env: Env) -> Check:
    name = "host ram"
    if env.facts.get("compute_target", "local") != "local":
        return Check(name, "skip", "the workflow runs on Azure ML")
    steps = host_ram_steps(env.facts)
    if not steps:
        return Check(name, "skip", "no merge and no ONNX build in this workflow")
    if env.memory is None:
        return Check(name, "skip", "could not read this machine's memory size")
    step, need = max(steps, key=lambda item: item[1])
    memory = env.memory
    container = memory.source.startswith("cgroup")
    have = f"{memory.total_gib:.1f} GiB" + " (container limit)" * container
    if memory.available_gib is not None:
        have += f", {memory.available_gib:.1f} GiB available"
    detail = f"{have}; {step} peaks at about {need:g} GiB (measured, 3.8 B model)"
    if memory.total_gib < need:
        int4 = max(need for _, need in host_ram_steps(dict(env.facts, onnx_precision="int4")))
        other_precision = env.facts.get("onnx_precision") != "int4"
        smaller = f"onnx_precision=int4 (about {int4:g} GiB) or " * (int4 < memory.total_gib and other_precision)
        if container:
            fix = f"raise this container's memory limit to at least {need:g} GiB, or generate the project with "
        else:
            fix = f"run the workflow on a machine with at least {need:g} GiB of RAM, or generate the project with "
        return Check(name, "fail", detail, fix + smaller + "compute_target=azureml")
    if memory.available_gib is not None and memory.available_gib < need:
        free = need - memory.available_gib
        return Check(name, "warn", detail, f"close programs to free about {free:.1f} GiB before fine-tuning/run.py")
    return Check(name, "ok", detail)


# ---------------------------------------------------------------- disk


def disk_parts(facts: dict, model_present: bool) -> list[tuple[str, float]]:
    """What the run writes, in GB: only what this project's answers make (no training, no merged model)."""
    download = float(facts.get("download_gb", DEFAULT_DOWNLOAD_GB))
    parts = [] if model_present else [("model download", download)]
    if facts.get("finetune_method") in ("lora", "qlora"):
        parts.append(("merged model (2 copies)", download * MERGED_FACTOR))
    precision = facts.get("onnx_precision", "int4")
    if precision in QUANTIZED_FACTOR:
        parts.append((f"{precision} PyTorch model", download * QUANTIZED_FACTOR[precision]))
    if precision != "none":
        parts.append((f"{precision} ONNX model (2 copies)", 2 * download * ONNX_FACTOR.get(precision, 1.0)))
    return parts


def check_disk(env: Env) -> Check:
    model_dir = env.facts.get("model_dir")
    present = bool(model_dir) and (project.ROOT / model_dir / "config.json").is_file()
    parts = disk_parts(env.facts, present)
    need = sum(size for _, size in parts)
    free = shutil.disk_usage(project.ROOT).free / 1e9
    if not parts:
        return Check("disk", "ok", f"{free:.0f} GB free at {project.ROOT}; nothing large to write")
    what = ", ".join(f"{label} {size:.1f} GB" for label, size in parts)
    detail = f"{free:.0f} GB free at {project.ROOT}; about {need:.0f} GB needed ({what}; an estimate)"
    if free < need:
        return Check("disk", "fail", detail, f"free {need - free:.0f} GB there, or move the project to a larger disk")
    return Check("disk", "ok", detail)


# the rows of --fast, in the report's order; full mode puts the torch probe in check_torch_package's place
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
    check_liger,
    check_host_ram,
    check_disk,
)
