"""setup/check_env.py of a generated project, run as the user runs it.

This machine has no NVIDIA GPU: the GPU cases put a fake `nvidia-smi` (canned CSV of a real card) first on PATH.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONTEXT, bake

ORT_GPU = CONTEXT["_pins"]["onnxruntime-gpu"]

CHECK = "setup/check_env.py"
MARKS = {"ok": "\u2713", "warn": "!", "fail": "\u2717", "skip": "\u2013"}
# name, memory.total and memory.free (MiB), compute_cap, driver_version: what the real cards report
H100 = "NVIDIA H100 80GB HBM3, 81559, 81000, 9.0, 550.54.15"
T4 = "Tesla T4, 15360, 14900, 7.5, 535.104.05"
V100 = "Tesla V100-SXM2-32GB, 32768, 32000, 7.0, 535.104.05"
RTX_6GB = "NVIDIA GeForce RTX 3050 6GB Laptop GPU, 6144, 5900, 8.6, 551.86"
RTX_4090 = "NVIDIA GeForce RTX 4090, 24564, 24000, 8.9, 550.54.15"
RTX_8GB = "NVIDIA GeForce RTX 4060, 8188, 7900, 8.9, 551.86"
PROFILES = CONTEXT["_training_profiles"]
DRIVER_DOWN = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    root = tmp_path_factory.mktemp("check_env")
    answers = {
        "lora_cuda": {},
        "qlora_cuda": {"finetune_method": "qlora"},
        "lora_cpu": {"execution_provider": "cpu"},
        "azure_cpu": {"compute_target": "azureml", "execution_provider": "cpu"},
    }
    return {name: bake(root / name, **extra) for name, extra in answers.items()}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("profiles")
    answers = {
        "lora_40gb": {"gpu_memory": "40gb"},
        "lora_24gb": {"gpu_memory": "24gb"},
        "qlora_8gb": {"finetune_method": "qlora", "gpu_memory": "8gb"},
        "qlora_16gb": {"finetune_method": "qlora"},
        "phi4_24gb": {"base_model": "microsoft/Phi-4-mini-instruct", "gpu_memory": "24gb"},
    }
    return {name: bake(root / name, **extra) for name, extra in answers.items()}


@pytest.fixture(scope="module")
def qlora_full(projects):
    """One full run of the QLoRA/cuda project, table and JSON (bitsandbytes makes each run seconds)."""
    found, payload = checks(projects["qlora_cuda"])
    return found, payload, run(projects["qlora_cuda"]).stdout


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """An interpreter with no third-party package at all, like a fresh cookiecutter install's neighbour."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, check=False)
    assert probe.returncode != 0, "the bare interpreter must not see torch"
    return python


def clean_env(**extra) -> dict:
    """This process's environment without any nvidia-smi on PATH (the machine then has no driver)."""
    if Path("/usr/lib/wsl/lib/nvidia-smi").is_file():
        pytest.skip("WSL's nvidia-smi cannot be hidden")
    path = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not shutil.which("nvidia-smi", path=d)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONIOENCODING")}
    env.update(PATH=os.pathsep.join(path), **extra)
    return env


def fake_smi(folder: Path, script: str) -> dict:
    """An environment whose PATH starts with an `nvidia-smi` running `script` (POSIX sh)."""
    if os.name == "nt":
        pytest.skip("the fake nvidia-smi is a shell script")
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + script + "\n", encoding="utf-8")
    smi.chmod(0o755)
    env = clean_env()
    env["PATH"] = f"{folder}{os.pathsep}{env['PATH']}"
    return env


def card(folder: Path, *lines: str) -> dict:
    return fake_smi(folder, "\n".join(f"echo '{line}'" for line in lines))


def run(project: Path, *args: str, env: dict | None = None, python=sys.executable):
    done = subprocess.run(
        [str(python), CHECK, *args],
        cwd=project,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        check=False,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def checks(project: Path, *args: str, **kwargs) -> tuple[dict, dict]:
    """(name -> check, the whole JSON object) from --json; stdout must hold nothing else."""
    done = run(project, "--json", *args, **kwargs)
    payload = json.loads(done.stdout)
    assert done.returncode == (0 if payload["ok"] else 1)
    return {check["name"]: check for check in payload["checks"]}, payload


def row(stdout: str, name: str) -> tuple[str, str]:
    """(status mark, the Fix line or '') of the table row for `name`."""
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in MARKS.values() and parts[1].startswith(name + "  "):
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return parts[0], following if following.startswith("Fix:") else ""
    raise AssertionError(f"no row {name!r} in:\n{stdout}")


SETUP_MODULES = ("project", "env_facts", "env_checks", "env_probes")


def skip_on_a_small_machine(found: dict) -> None:
    """An exact list of problems holds on a machine with the RAM the workflow needs (CI's has 24 GiB)."""
    if found["host ram"]["status"] == "fail" or found["disk"]["status"] == "fail":
        pytest.skip(f"this machine is short of RAM or disk: {found['host ram']['detail']}")


def counted(found: dict) -> str:
    """The summary's opening, "N problems[, M warnings]": a busy machine's low free RAM is a warning."""
    failed = sum(check["status"] == "fail" for check in found.values())
    warned = sum(check["status"] == "warn" for check in found.values())
    opening = f"{failed} problem{'s' * (failed != 1)}"
    return opening + (f", {warned} warning{'s' * (warned != 1)}" if warned else "")


def load_modules(project: Path) -> dict:
    """The generated check_env.py and the modules it imports, by name.

    sys.path and sys.modules are left as they were: every generated project has its own env_*.py.
    """
    saved_path = list(sys.path)
    saved = {name: sys.modules.pop(name) for name in SETUP_MODULES if name in sys.modules}
    try:
        spec = importlib.util.spec_from_file_location("check_env_under_test", project / CHECK)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules = {"check_env": module, **{name: sys.modules[name] for name in SETUP_MODULES}}
    finally:
        sys.path[:] = saved_path
        for name in SETUP_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return modules


# ---------------------------------------------------------------- this machine: no GPU, no nvidia-smi


@pytest.mark.parametrize("mode", [["--fast"], []], ids=["fast", "full"])
def test_no_gpu_lora_project_is_a_readable_failure(projects, mode):
    done = run(projects["lora_cuda"], *mode)
    assert done.returncode == 1
    mark, fix = row(done.stdout, "nvidia driver")
    assert mark == MARKS["fail"]
    assert "NVIDIA driver" in fix and "compute_target=azureml" in fix
    assert row(done.stdout, "python")[0] == MARKS["ok"]
    assert row(done.stdout, "project")[0] == MARKS["ok"]
    assert row(done.stdout, "gpu memory")[0] == MARKS["skip"]  # one missing GPU is one problem, not three
    last = done.stdout.strip().splitlines()[-1]
    failures = sum(line.lstrip().startswith(MARKS["fail"]) for line in done.stdout.splitlines())
    assert last.startswith(f"{failures} problem")
    assert ("--fast" in last) == bool(mode)
    if not mode:  # onnxruntime (CPU) here: the session's failure is the onnxruntime package row's, not a second one
        assert row(done.stdout, "onnxruntime session") == (MARKS["skip"], "")
        assert row(done.stdout, "onnxruntime package")[0] == MARKS["fail"]
        assert row(done.stdout, "bitsandbytes")[0] == MARKS["skip"]


def test_cpu_only_project_trained_on_azure_is_ready_here(projects):
    found, payload = checks(projects["azure_cpu"], "--fast")
    if found["disk"]["status"] == "fail":
        pytest.skip("this disk is too small for the estimate")
    assert payload["ok"], payload
    assert found["nvidia driver"]["status"] == "skip"
    assert found["gpu memory"]["status"] == found["bf16 (compute capability)"]["status"] == "skip"
    done = run(projects["azure_cpu"])
    assert done.returncode == 0, done.stdout
    assert row(done.stdout, "onnxruntime session")[0] == row(done.stdout, "torch")[0] == MARKS["ok"]
    assert done.stdout.strip().splitlines()[-1] == (
        "Ready: LoRA training of microsoft/Phi-3-mini-4k-instruct (on Azure ML), the int4 ONNX model on cpu."
    )
    assert "Fix:" not in done.stdout


def test_fast_mode_with_no_third_party_packages(projects, bare_python):
    project = projects["lora_cuda"]
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        done = run(project, "--fast", python=bare_python)
        timings.append(time.perf_counter() - started)
    assert min(timings) < 1.0, timings
    assert done.returncode == 1
    mark, fix = row(done.stdout, "torch")
    assert mark == MARKS["fail"] and fix == "Fix: python -m pip install -r setup/requirements.txt"
    mark, fix = row(done.stdout, "onnxruntime package")
    assert mark == MARKS["fail"] and "pip install -r setup/requirements.txt" in fix
    assert row(done.stdout, "packages")[0] == MARKS["fail"]
    assert "olive-ai" in done.stdout and "not installed" in done.stdout
    assert row(done.stdout, "python")[0] == MARKS["ok"]


def test_full_mode_with_no_third_party_packages(projects, bare_python):
    found, payload = checks(projects["qlora_cuda"], python=bare_python)
    assert not payload["ok"]
    for name in ("torch", "packages", "onnxruntime package", "onnxruntime-genai package"):
        assert found[name]["status"] == "fail", found[name]
        assert "pip install" in found[name]["fix"]
    # not installed: one cause each, counted and fixed in the package rows
    for name, package in (
        ("onnxruntime session", "onnxruntime package"),
        ("onnxruntime-genai", "onnxruntime-genai package"),
        ("bitsandbytes", "packages"),
    ):
        assert found[name]["status"] == "skip" and not found[name]["fix"], found[name]
        assert found[name]["detail"].endswith(f"; same cause as {package}, see its fix"), found[name]
    assert "import failed" in found["bitsandbytes"]["detail"]
    assert "bitsandbytes" in found["packages"]["detail"]
    skip_on_a_small_machine(found)
    assert counted(found).startswith("5 problems")
    assert payload["summary"].startswith(
        f"{counted(found)}: packages, onnxruntime package, onnxruntime-genai package, torch, nvidia driver; "
    )


def test_fast_mode_time_with_the_full_environment(projects):
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        run(projects["lora_cuda"], "--fast")
        timings.append(time.perf_counter() - started)
    assert min(timings) < 1.0, timings


def test_unreadable_project_json_is_reported(projects, tmp_path):
    project = Path(shutil.copytree(projects["lora_cuda"], tmp_path / "p"))
    (project / "setup" / "project.json").write_text("{not json", encoding="utf-8")
    (project / "setup" / "requirements.txt").unlink()
    found, payload = checks(project, "--fast")
    assert found["project"]["status"] == "fail"
    assert "assuming the template defaults" in found["project"]["detail"]
    assert ".cookiecutter.json" in found["project"]["fix"]
    assert found["packages"]["status"] == "fail" and "requirements.txt" in found["packages"]["detail"]
    assert found["nvidia driver"]["status"] == "fail"  # the defaults train LoRA here
    assert found["disk"]["status"] in ("ok", "fail")


def test_console_without_unicode_gets_ascii_marks(projects):
    done = run(projects["lora_cuda"], "--fast", env=clean_env(PYTHONIOENCODING="cp1252"))
    assert done.returncode == 1
    assert not any(mark in done.stdout for mark in MARKS.values() if mark != "!")
    assert "  FAIL  nvidia driver" in done.stdout and "  OK    python" in done.stdout


@pytest.mark.parametrize("mode", [["--fast"], []], ids=["fast", "full"])
def test_json_matches_the_table(projects, qlora_full, mode):
    if mode:
        found, payload = checks(projects["qlora_cuda"], *mode)
        table = run(projects["qlora_cuda"], *mode).stdout
    else:
        found, payload, table = qlora_full
    assert payload["mode"] == ("fast" if mode else "full")
    for name, check in found.items():
        mark, fix = row(table, name)
        assert mark == MARKS[check["status"]], name
        assert fix == (f"Fix: {check['fix']}" if check["fix"] and check["status"] in ("fail", "warn") else "")
    failed = [name for name, check in found.items() if check["status"] == "fail"]
    last = table.strip().splitlines()[-1]
    tail = " (--fast: torch, onnxruntime, bitsandbytes not imported; run `python setup/check_env.py`)" * bool(mode)
    assert last == f"{counted(found)}: fix each one above, then run this again.{tail}"
    # JSON has no "above": its summary names the checks
    assert payload["summary"] == (
        f"{counted(found)}: {', '.join(failed)}; apply the fix of each, then run `python setup/check_env.py` "
        f"again.{tail}"
    )


# ---------------------------------------------------------------- emulated GPUs (fake nvidia-smi)


def profile_need(method: str, gpu_memory: str) -> str:
    """The need check_env states for a profile: its measured peak plus the CUDA context, as in the row."""
    return f"about {round(PROFILES[method][gpu_memory]['peak_gib'] + 0.5, 1)} GiB"


def test_h100_is_ready_for_lora_and_names_the_faster_profile(projects, tmp_path):
    found, _ = checks(projects["lora_cuda"], "--fast", env=card(tmp_path, H100))
    driver = found["nvidia driver"]
    assert driver["status"] == "ok" and "NVIDIA H100 80GB HBM3" in driver["detail"] and "550.54.15" in driver["detail"]
    memory = found["gpu memory"]
    assert memory["status"] == "ok" and f"the 16gb profile (batch 1) needs {profile_need('lora', '16gb')}" in (
        memory["detail"]
    )
    fastest = PROFILES["lora"]["40gb"]["tokens_per_s"]
    assert f"fits the 40gb profile: {fastest:,} tokens/s against 8,830" in memory["detail"]
    assert "gpu_memory=40gb" in memory["detail"]
    assert found["bf16 (compute capability)"]["status"] == "ok"


def test_a_profile_too_big_for_the_card_names_the_one_that_fits(profiled, tmp_path):
    found, _ = checks(profiled["lora_40gb"], "--fast", env=card(tmp_path, RTX_4090))
    memory = found["gpu memory"]
    assert found["liger kernels"]["status"] == "fail"  # not installed here; its own row
    assert memory["status"] == "fail" and f"the 40gb profile (batch 4) needs {profile_need('lora', '40gb')}" in (
        memory["detail"]
    )
    assert memory["fix"].startswith("generate the project with gpu_memory=24gb (about 17.5 GiB)")
    # the 24gb profile on the same card: fits, and nothing faster does
    found, _ = checks(profiled["lora_24gb"], "--fast", env=card(tmp_path, RTX_4090))
    assert found["gpu memory"]["status"] == "ok" and "fits the" not in found["gpu memory"]["detail"]


def test_t4_with_the_qlora_16gb_profile_drops_its_bf16_autocast_too(profiled, tmp_path):
    found, _ = checks(profiled["qlora_16gb"], "--fast", env=card(tmp_path, T4))
    bf16 = found["bf16 (compute capability)"]
    assert bf16["status"] == "fail"
    assert bf16["fix"].startswith('set passes.qlora.torch_dtype in fine-tuning/olive-config.json to "float16"')
    assert bf16["fix"].endswith(', and remove "bf16": true from passes.qlora.training_args')


def test_a_gpu_without_bf16_is_not_sent_to_a_bf16_profile(profiled, tmp_path):
    """The 16gb QLoRA profile is faster and fits a 15 GiB T4, but its bf16 autocast fails there."""
    assert CONTEXT["_training_profiles"]["qlora"]["16gb"]["bf16"] is True
    found, _ = checks(profiled["qlora_8gb"], "--fast", env=card(tmp_path, T4))
    assert found["bf16 (compute capability)"]["status"] == "fail"  # its torch_dtype, the row says how
    memory = found["gpu memory"]
    assert memory["status"] == "ok" and "fits the" not in memory["detail"], memory
    # the same project on a card with bf16 and as much memory is pointed to it
    found, _ = checks(profiled["qlora_8gb"], "--fast", env=card(tmp_path, RTX_4090))
    assert "this GPU fits the 16gb profile: " in found["gpu memory"]["detail"]


def test_qlora_8gb_profile_fits_an_8gb_card(profiled, tmp_path):
    found, _ = checks(profiled["qlora_8gb"], "--fast", env=card(tmp_path, RTX_8GB))
    memory = found["gpu memory"]
    assert memory["status"] == "ok" and profile_need("qlora", "8gb") in memory["detail"]


def edit_training_args(project: Path, folder: Path, **changes) -> Path:
    """A copy of the project whose LoRA/QLoRA training_args are changed (a value None removes the key)."""
    copy = Path(shutil.copytree(project, folder))
    config_path = copy / "fine-tuning" / "olive-config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    args = next(spec for spec in config["passes"].values() if "training_args" in spec)["training_args"]
    for key, value in changes.items():
        if value is None:
            del args[key]
        else:
            args[key] = value
    config_path.write_text(json.dumps(config), encoding="utf-8")
    return copy


def test_a_profile_row_copied_from_the_readme_counts_as_that_profile(projects, tmp_path):
    row = {key: PROFILES["lora"]["24gb"][key] for key in ("per_device_train_batch_size", "gradient_checkpointing")}
    project = edit_training_args(projects["lora_cuda"], tmp_path / "p", bf16=True, **row)
    found, _ = checks(project, "--fast", env=card(tmp_path / "bin", H100))
    memory = found["gpu memory"]
    assert memory["status"] == "ok" and f"the 24gb profile (batch 1) needs {profile_need('lora', '24gb')}" in (
        memory["detail"]
    )
    assert "against 13,481" in memory["detail"]  # the hint compares with the settings in use


def test_a_batch_the_config_leaves_out_is_transformers_8(projects, tmp_path):
    project = edit_training_args(projects["lora_cuda"], tmp_path / "p", per_device_train_batch_size=None)
    found, _ = checks(project, "--fast", env=card(tmp_path / "bin", H100))
    memory = found["gpu memory"]
    assert memory["status"] == "warn" and "profile" not in memory["detail"] and "batch 8" in memory["detail"]


def test_lora_on_an_8gb_card_is_sent_to_the_8gb_qlora_profile(projects, tmp_path):
    found, _ = checks(projects["lora_cuda"], "--fast", env=card(tmp_path, RTX_8GB))
    memory = found["gpu memory"]
    assert memory["status"] == "fail"
    assert f"finetune_method=qlora gpu_memory=8gb ({profile_need('qlora', '8gb')})" in memory["fix"]


def test_a_profile_measured_on_another_shape_warns_for_phi4(profiled, tmp_path):
    found, _ = checks(profiled["phi4_24gb"], "--fast", env=card(tmp_path, H100))
    memory = found["gpu memory"]
    assert memory["status"] == "warn" and "measured on microsoft/Phi-3-mini-4k-instruct" in memory["detail"]
    assert "gradient_checkpointing" in memory["fix"]


def test_liger_row(profiled, projects, tmp_path):
    found, _ = checks(projects["lora_cuda"], "--fast", env=card(tmp_path, H100))
    assert found["liger kernels"]["status"] == "skip"  # the 16gb profile does not use them
    found, _ = checks(profiled["lora_40gb"], "--fast", env=card(tmp_path, H100))
    liger = found["liger kernels"]
    # this CPU test environment has no liger-kernel (it needs Triton): the 40gb project pins it for Linux
    assert liger["status"] == "fail" and "passes.lora.training_args.use_liger_kernel is true" in liger["detail"]
    assert liger["fix"] == "python -m pip install -r setup/requirements.txt"
    assert "liger-kernel" not in found["packages"]["detail"]  # one cause, one row
    copied = edit_training_args(projects["lora_cuda"], tmp_path / "p", use_liger_kernel=True)
    found, _ = checks(copied, "--fast", env=card(tmp_path / "bin", H100))
    assert found["liger kernels"]["fix"].startswith("python -m pip install liger-kernel")


def test_a_changed_batch_leaves_the_profile_and_warns(projects, tmp_path):
    project = Path(shutil.copytree(projects["lora_cuda"], tmp_path / "p"))
    config_path = project / "fine-tuning" / "olive-config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["passes"]["lora"]["training_args"]["per_device_train_batch_size"] = 2
    config_path.write_text(json.dumps(config), encoding="utf-8")
    found, _ = checks(project, "--fast", env=card(tmp_path / "bin", H100))
    memory = found["gpu memory"]
    assert memory["status"] == "warn" and "profile" not in memory["detail"] and "batch 2" in memory["detail"]


def test_t4_has_no_bf16(projects, tmp_path):
    env = card(tmp_path, T4)
    found, _ = checks(projects["qlora_cuda"], "--fast", env=env)
    bf16 = found["bf16 (compute capability)"]
    assert bf16["status"] == "fail" and "compute 7.5" in bf16["detail"]
    assert 'set passes.qlora.torch_dtype in fine-tuning/olive-config.json to "float16"' in bf16["fix"]
    assert found["gpu memory"]["status"] == "ok"
    # LoRA in float32 does not fit a 15 GiB T4: the fix is QLoRA in float16, not a dtype alone
    found, _ = checks(projects["lora_cuda"], "--fast", env=env)
    assert "finetune_method=qlora" in found["bf16 (compute capability)"]["fix"]


def test_v100_lora_fix_names_the_dtype_key_and_the_memory(projects, tmp_path):
    found, _ = checks(projects["lora_cuda"], "--fast", env=card(tmp_path, V100))
    bf16 = found["bf16 (compute capability)"]
    assert bf16["status"] == "fail"
    assert 'set passes.lora.torch_dtype in fine-tuning/olive-config.json to "float16"' in bf16["fix"]
    assert "about 18 GiB" in bf16["fix"]


def test_float16_config_passes_on_t4_and_needs_more_memory(projects, tmp_path):
    project = Path(shutil.copytree(projects["lora_cuda"], tmp_path / "p"))
    config_path = project / "fine-tuning" / "olive-config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["passes"]["lora"]["torch_dtype"] = "float16"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    found, _ = checks(project, "--fast", env=card(tmp_path / "bin", T4))
    assert found["bf16 (compute capability)"]["status"] == "ok"
    memory = found["gpu memory"]
    assert memory["status"] == "fail" and "about 18 GiB" in memory["detail"] and "QLoRA" in memory["fix"]
    found, _ = checks(project, "--fast", env=card(tmp_path / "bin", H100))
    assert found["bf16 (compute capability)"]["status"] == "warn"  # bf16 would halve the memory


def test_6gb_card_is_too_small_for_lora(projects, tmp_path):
    found, _ = checks(projects["lora_cuda"], "--fast", env=card(tmp_path, RTX_6GB))
    memory = found["gpu memory"]
    assert memory["status"] == "fail" and "5.8 GiB free of 6.0 GiB" in memory["detail"]
    assert "finetune_method=qlora" in memory["fix"]
    assert found["bf16 (compute capability)"]["status"] == "ok"


def test_busy_gpu_names_other_processes(projects, tmp_path):
    busy = "NVIDIA A100-SXM4-40GB, 40960, 3000, 8.0, 550.54.15"
    found, _ = checks(projects["lora_cuda"], "--fast", env=card(tmp_path, busy))
    assert found["gpu memory"]["status"] == "fail" and "other processes" in found["gpu memory"]["fix"]


def test_two_gpus_the_one_with_most_free_memory_counts(projects, tmp_path):
    found, _ = checks(projects["lora_cuda"], "--fast", env=card(tmp_path, RTX_6GB, H100))
    assert "GPU 1: NVIDIA H100" in found["nvidia driver"]["detail"]
    assert found["gpu memory"]["status"] == "ok" and "NVIDIA H100" in found["gpu memory"]["detail"]


def test_driver_that_does_not_answer(projects, tmp_path):
    done = run(projects["lora_cuda"], "--fast", env=fake_smi(tmp_path, f'echo "{DRIVER_DOWN}"\nexit 9'))
    assert done.returncode == 1
    mark, fix = row(done.stdout, "nvidia driver")
    assert mark == MARKS["fail"] and "reboot" in fix and "reinstall the driver" in fix
    assert "nvidia-smi failed (exit 9): NVIDIA-SMI has failed" in done.stdout


def test_driver_library_mismatch_says_reboot(projects, tmp_path):
    env = fake_smi(tmp_path, 'echo "Failed to initialize NVML: Driver/library version mismatch"\nexit 18')
    found, _ = checks(projects["lora_cuda"], "--fast", env=env)
    assert found["nvidia driver"]["status"] == "fail"
    assert found["nvidia driver"]["fix"].endswith("reboot")


def test_garbage_from_nvidia_smi(projects, tmp_path):
    found, _ = checks(projects["lora_cuda"], "--fast", env=fake_smi(tmp_path, "echo 'No devices were found, sorry'"))
    assert found["nvidia driver"]["status"] == "fail"
    assert "unexpected nvidia-smi output" in found["nvidia driver"]["detail"]


def test_old_driver_without_compute_cap(projects, tmp_path):
    script = (
        'case "$1" in *compute_cap*) echo \'Field "compute_cap" is not a valid field to query.\'; exit 2;; esac\n'
        "echo 'Tesla T4, 15360, 14900, 470.82.01'"
    )
    found, _ = checks(projects["lora_cuda"], "--fast", env=fake_smi(tmp_path, script))
    assert found["nvidia driver"]["status"] == "ok" and "470.82.01" in found["nvidia driver"]["detail"]
    assert found["bf16 (compute capability)"]["status"] == "warn"


def test_hung_nvidia_smi_times_out(projects, tmp_path, monkeypatch):
    env = fake_smi(tmp_path, "sleep 30")
    monkeypatch.setenv("PATH", env["PATH"])
    env_facts = load_modules(projects["lora_cuda"])["env_facts"]
    monkeypatch.setattr(env_facts, "SMI_TIMEOUT_S", 0.5)
    started = time.perf_counter()
    gpus, error, fix = env_facts.query_gpus()
    assert time.perf_counter() - started < 10
    assert gpus == [] and "did not answer" in error and "reboot" in fix


# ---------------------------------------------------------------- packages


def fake_distribution(site: Path, name: str, version: str) -> None:
    """A real importlib.metadata distribution (dist-info with METADATA), no code: only the package record."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")


def test_both_genai_packages_installed(projects, tmp_path):
    project = projects["lora_cpu"]
    found, _ = checks(project, "--fast")
    assert found["onnxruntime-genai package"]["status"] == "ok", "this venv holds only onnxruntime-genai"
    fake_distribution(tmp_path, "onnxruntime-genai-cuda", CONTEXT["_pins"]["onnxruntime-genai-cuda"])
    fake_distribution(tmp_path, "onnxruntime-gpu", ORT_GPU)
    found, payload = checks(project, "--fast", env=clean_env(PYTHONPATH=str(tmp_path)))
    assert not payload["ok"]
    genai = found["onnxruntime-genai package"]
    assert genai["status"] == "fail" and "overwrite each other" in genai["detail"]
    assert genai["fix"] == (
        "python -m pip uninstall -y onnxruntime-genai onnxruntime-genai-cuda && "
        f"python -m pip install onnxruntime-genai=={CONTEXT['_pins']['onnxruntime-genai']}"
    )
    ort = found["onnxruntime package"]
    assert ort["status"] == "fail" and f"onnxruntime-gpu {ORT_GPU}" in ort["detail"]


def test_cpu_only_packages_for_a_cuda_project(projects):
    found, _ = checks(projects["lora_cuda"], "--fast")
    ort = found["onnxruntime package"]
    assert ort["status"] == "fail" and "no CUDA provider" in ort["detail"]
    assert ort["fix"].endswith(f"python -m pip install onnxruntime-gpu=={ORT_GPU}")


def test_version_drift_is_a_warning(projects, tmp_path):
    fake_distribution(tmp_path, "peft", "0.1.0")
    found, _ = checks(projects["lora_cpu"], "--fast", env=clean_env(PYTHONPATH=str(tmp_path)))
    packages = found["packages"]
    assert packages["status"] == "warn" and "peft 0.1.0 (pinned" in packages["detail"]
    assert packages["fix"] == "python -m pip install -r setup/requirements.txt"


# ---------------------------------------------------------------- full mode: real imports


def test_onnxruntime_session_cpu_provider(projects):
    found, _ = checks(projects["lora_cpu"])
    session = found["onnxruntime session"]
    assert session["status"] == "ok" and "CPUExecutionProvider" in session["detail"]
    assert found["onnxruntime-genai"]["status"] == "ok"
    assert found["bitsandbytes"]["status"] == "skip"


def test_onnxruntime_session_cuda_provider_without_onnxruntime_gpu(qlora_full):
    found = qlora_full[0]
    session = found["onnxruntime session"]
    assert session["status"] == "skip" and "no CUDAExecutionProvider" in session["detail"]
    assert session["detail"].endswith("; same cause as onnxruntime package, see its fix") and not session["fix"]
    assert f"onnxruntime-gpu=={ORT_GPU}" in found["onnxruntime package"]["fix"]
    genai = found["onnxruntime-genai"]
    assert genai["status"] == "skip" and "no CUDA support" in genai["detail"] and not genai["fix"]
    assert "onnxruntime-genai-cuda" in found["onnxruntime-genai package"]["fix"]
    assert found["bitsandbytes"]["status"] == "ok"  # installed here; QLoRA needs it
    torch = found["torch"]
    assert torch["status"] == "fail" and "CPU-only build" in torch["detail"] and "download.pytorch.org" in torch["fix"]


# what onnxruntime-gpu logs on fd 2 when libcudnn is missing, then it falls back to CPU without raising
CUDNN_MISSING = (
    "[E:onnxruntime:Default, provider_bridge_ort.cc:2195 TryGetProviderInfo_CUDA] /onnxruntime_src/onnxruntime/core/"
    "session/provider_bridge_ort.cc:1778 onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() "
    "[ONNXRuntimeError] : 1 : FAIL : Failed to load library libonnxruntime_providers_cuda.so with error: "
    "libcudnn.so.9: cannot open shared object file: No such file or directory"
)
FAKE_ORT_GPU = f"""
import os
import numpy as np

__version__ = "{ORT_GPU}"


def get_available_providers():
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class InferenceSession:
    def __init__(self, model, providers):
        assert isinstance(model, bytes) and model
        if "CUDAExecutionProvider" in providers:
            os.write(2, {CUDNN_MISSING!r}.encode() + b"\\n")

    def get_providers(self):
        return ["CPUExecutionProvider"]

    def run(self, outputs, feeds):
        return [np.asarray(feeds["x"]) * 2]
"""


def test_one_cause_is_one_problem(projects):
    """This machine's CPU onnxruntime packages in a cuda project: each cause counted once, its fix given once."""
    found, payload = checks(projects["lora_cuda"])
    skip_on_a_small_machine(found)
    failed = {name: check for name, check in found.items() if check["status"] == "fail"}
    assert set(failed) == {"onnxruntime package", "onnxruntime-genai package", "torch", "nvidia driver"}
    assert payload["summary"].startswith(f"{counted(found)}: ") and counted(found).startswith("4 problems")
    fixes = [check["fix"] for check in failed.values()]
    assert len(set(fixes)) == len(fixes), "one fix, one row"
    for name in ("onnxruntime session", "onnxruntime-genai"):
        assert found[name]["status"] == "skip" and not found[name]["fix"]
        assert found[name]["detail"].endswith(f"; same cause as {name.split(' ')[0]} package, see its fix")


def test_cuda_provider_that_fails_to_load_is_caught_by_the_session(projects, tmp_path):
    """onnxruntime-gpu lists CUDAExecutionProvider although libcudnn is missing: only a real session tells."""
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text(FAKE_ORT_GPU, encoding="utf-8")
    info = tmp_path / f"onnxruntime_gpu-{ORT_GPU}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: {ORT_GPU}\n"
        'Requires-Dist: nvidia-cuda-runtime~=13.0; extra == "cuda"\n'
        'Requires-Dist: nvidia-cudnn-cu13~=9.0; extra == "cudnn"\n',
        encoding="utf-8",
    )
    done = run(projects["lora_cuda"], env=clean_env(PYTHONPATH=str(tmp_path)))
    assert CUDNN_MISSING not in done.stderr, "the ORT log is captured, not leaked"
    mark, fix = row(done.stdout, "onnxruntime session")
    assert mark == MARKS["fail"]
    assert "did not load, the session fell back to CPU" in done.stdout
    assert "libcudnn.so.9: cannot open shared object file" in done.stdout
    assert "needs CUDA 13 and cuDNN 9" in fix and f'"onnxruntime-gpu[cuda,cudnn]=={ORT_GPU}"' in fix
    # the package row fails too (onnxruntime and onnxruntime-gpu together), but for another cause: both count
    assert row(done.stdout, "onnxruntime package")[0] == MARKS["fail"]


# ---------------------------------------------------------------- pieces


def test_disk_estimate(projects):
    env_checks = load_modules(projects["lora_cuda"])["env_checks"]

    def need(facts: dict, model_present: bool) -> float:
        return sum(size for _, size in env_checks.disk_parts(facts, model_present))

    facts = {"finetune_method": "lora", "onnx_precision": "int4", "download_gb": 10.0}
    # 1 download + 2 merged + 0.3 4-bit PyTorch + 2 x 0.35 int4 ONNX (Olive's cache and gen-model/onnx)
    assert need(facts, model_present=False) == pytest.approx(40.0)
    assert need(facts, model_present=True) == pytest.approx(30.0)
    assert need({**facts, "finetune_method": "none"}, False) == pytest.approx(20.0)
    assert need({"finetune_method": "none", "onnx_precision": "fp32"}, False) == pytest.approx(
        5 * env_checks.DEFAULT_DOWNLOAD_GB
    )


def test_cpu_facts_from_x86_and_arm_cpuinfo(projects, tmp_path):
    """The benchmarks record the CPU's name and chat.py picks bf16 from its flags: x86 and Arm word them apart."""
    env_facts = load_modules(projects["lora_cuda"])["env_facts"]
    x86 = tmp_path / "x86"
    x86.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu avx512f avx512_bf16 amx_bf16\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n",
        encoding="utf-8",
    )
    assert env_facts.cpu_model(x86) == "Intel(R) Xeon(R) Platinum 8480+"
    assert env_facts.cpu_flags(x86) == {"fpu", "avx512f", "avx512_bf16", "amx_bf16"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd bf16 i8mm\nCPU part\t: 0xd4f\n")
    assert env_facts.cpu_flags(arm) == {"fp", "asimd", "bf16", "i8mm"}
    assert env_facts.cpu_model(arm)  # no model name there: the platform's own name
    assert env_facts.cpu_flags(tmp_path / "missing") == set()


def disk_detail(project: Path, **facts) -> str:
    modules = load_modules(project)
    env = modules["env_facts"].Env(facts={"model_dir": "model-cache/none/here", "download_gb": 10.0, **facts})
    return modules["env_checks"].check_disk(env).detail


@pytest.mark.parametrize(
    ("method", "precision", "parts"),
    [
        (
            "lora",
            "int4",
            "model download 10.0 GB, merged model (2 copies) 20.0 GB, int4 PyTorch model 3.0 GB, "
            "int4 ONNX model (2 copies) 7.0 GB",
        ),
        (
            "qlora",
            "fp32",
            "model download 10.0 GB, merged model (2 copies) 20.0 GB, fp32 ONNX model (2 copies) 40.0 GB",
        ),
        ("none", "int4", "model download 10.0 GB, int4 PyTorch model 3.0 GB, int4 ONNX model (2 copies) 7.0 GB"),
        ("lora", "none", "model download 10.0 GB, merged model (2 copies) 20.0 GB"),
        ("none", "none", "model download 10.0 GB"),
    ],
)
def test_disk_detail_lists_what_the_estimate_holds(projects, method, precision, parts):
    detail = disk_detail(projects["lora_cuda"], finetune_method=method, onnx_precision=precision)
    total = sum(float(part.split()[-2]) for part in parts.split(", "))
    assert detail.endswith(f"; about {total:.0f} GB needed ({parts}; an estimate)"), detail


def test_disk_detail_without_the_download(projects, tmp_path):
    project = Path(shutil.copytree(projects["lora_cuda"], tmp_path / "p"))
    model = project / json.loads((project / "setup" / "project.json").read_text(encoding="utf-8"))["model_dir"]
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}", encoding="utf-8")
    facts = {"model_dir": str(model.relative_to(project)), "finetune_method": "none"}
    fp16 = disk_detail(project, **facts, onnx_precision="fp16")
    assert fp16.endswith("(fp16 ONNX model (2 copies) 20.0 GB; an estimate)")
    assert disk_detail(project, **facts, onnx_precision="none").endswith("; nothing large to write")


# ---------------------------------------------------------------- host RAM


def meminfo_gib(name: str) -> float:
    for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024**2
    raise AssertionError(name)


def test_host_ram_row_reads_this_machine(projects):
    found, _ = checks(projects["lora_cpu"], "--fast")
    ram = found["host ram"]
    memory = load_modules(projects["lora_cpu"])["env_facts"].host_memory()
    if memory is None:
        assert ram["status"] == "skip"
        return
    if memory.source == "/proc/meminfo":
        assert ram["detail"].startswith(f"{meminfo_gib('MemTotal'):.1f} GiB, ")
    assert ram["detail"].endswith(
        "; the int4 workflow (training to the ONNX model, one olive run) peaks at about 11.4 GiB "
        "(measured, 3.8 B model)"
    )
    total, available = (float(part.split()[0]) for part in ram["detail"].split(";")[0].split(", "))
    assert ram["status"] == ("fail" if total < 11.4 else "warn" if available < 11.4 else "ok"), ram
    azure, _ = checks(projects["azure_cpu"], "--fast")
    assert azure["host ram"] == {
        "name": "host ram", "status": "skip", "detail": "the workflow runs on Azure ML", "fix": ""
    }


@pytest.mark.parametrize(
    ("facts", "total", "available", "status", "detail", "fix"),
    [
        (
            {"finetune_method": "lora", "onnx_precision": "int4"}, 8.0, 7.5, "fail",
            "8.0 GiB, 7.5 GiB available; the int4 workflow (training to the ONNX model, one olive run) peaks at "
            "about 11.4 GiB",
            "run the workflow on a machine with at least 11.4 GiB of RAM, or generate the project with "
            "compute_target=azureml",
        ),
        (
            {"finetune_method": "qlora", "onnx_precision": "fp32"}, 15.6, 15.0, "fail",
            "15.6 GiB, 15.0 GiB available; building the fp32 ONNX model peaks at about 16.3 GiB",
            "run the workflow on a machine with at least 16.3 GiB of RAM, or generate the project with "
            "onnx_precision=int4 (about 11.4 GiB) or compute_target=azureml",
        ),
        (
            {"finetune_method": "lora", "onnx_precision": "none"}, 31.3, 5.0, "warn",
            "31.3 GiB, 5.0 GiB available; merging the adapter peaks at about 7.7 GiB",
            "close programs to free about 2.7 GiB before fine-tuning/run.py",
        ),
        (
            {"finetune_method": "none", "onnx_precision": "int4"}, 8.0, 7.5, "fail",
            "8.0 GiB, 7.5 GiB available; building the int4 ONNX model peaks at about 10.9 GiB",
            "run the workflow on a machine with at least 10.9 GiB of RAM, or generate the project with "
            "compute_target=azureml",
        ),
        (
            {"finetune_method": "none", "onnx_precision": "fp32"}, 12.0, 11.5, "fail",
            "12.0 GiB, 11.5 GiB available; building the fp32 ONNX model peaks at about 16.3 GiB",
            "run the workflow on a machine with at least 16.3 GiB of RAM, or generate the project with "
            "onnx_precision=int4 (about 10.9 GiB) or compute_target=azureml",
        ),
        (
            {"finetune_method": "none", "onnx_precision": "fp32"}, 31.3, 30.0, "ok",
            "31.3 GiB, 30.0 GiB available; building the fp32 ONNX model peaks at about 16.3 GiB", "",
        ),
        ({"finetune_method": "none", "onnx_precision": "none"}, 4.0, 1.0, "skip", "no merge and no ONNX build", ""),
    ],
)
def test_host_ram_judgement(projects, facts, total, available, status, detail, fix):
    modules = load_modules(projects["lora_cuda"])
    memory = modules["env_facts"].HostMemory(total, available, "/proc/meminfo")
    check = modules["env_checks"].check_host_ram(modules["env_facts"].Env(facts=facts, memory=memory))
    assert (check.status, check.fix) == (status, fix)
    assert check.detail.startswith(detail), check.detail


GIB = 1024**3


def cgroup_tree(root: Path, files: dict[str, object]) -> None:
    for name, value in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{value}\n", encoding="ascii")


@pytest.mark.parametrize(
    ("own", "files", "limit", "free"),
    [
        # cgroup v2 inside a namespace: the mount is the process's own cgroup; page cache counts as free
        ("0::/", {"memory.max": 6 * GIB, "memory.current": 5 * GIB, "memory.stat": "anon 1\ninactive_file 3221225472"},
         6.0, 4.0),
        ("0::/", {"memory.max": "max", "memory.current": 5 * GIB}, None, None),
        # a parent's limit binds a child without one (systemd MemoryMax=, a Slurm job step)
        ("0::/job/step", {"job/memory.max": 5 * GIB, "job/memory.current": 2 * GIB, "job/step/memory.max": "max"},
         5.0, 3.0),
        # cgroup v1: "no limit" is a number near 2**63
        ("4:memory:/", {"memory/memory.limit_in_bytes": 2**63 - 4096, "memory/memory.usage_in_bytes": GIB}, None, None),
        ("7:cpu:/\n4:memory:/box", {"memory/box/memory.limit_in_bytes": 4 * GIB,
                                     "memory/box/memory.usage_in_bytes": 3 * GIB,
                                     "memory/box/memory.stat": f"cache 5\ntotal_inactive_file {GIB}"}, 4.0, 2.0),
    ],
    ids=["v2", "v2-unlimited", "v2-parent", "v1-unlimited", "v1"],
)
def test_host_ram_follows_a_container_limit(projects, tmp_path, monkeypatch, own, files, limit, free):
    modules = load_modules(projects["lora_cuda"])
    env_facts = modules["env_facts"]
    cgroup_tree(tmp_path / "sys", files)
    (tmp_path / "self").write_text(own + "\n", encoding="ascii")
    monkeypatch.setattr(env_facts, "CGROUP", tmp_path / "sys")
    monkeypatch.setattr(env_facts, "SELF_CGROUP", tmp_path / "self")
    memory = env_facts.host_memory()
    if limit is None:
        assert memory.source == "/proc/meminfo"
        return
    assert (memory.total_gib, memory.source) == (limit, "cgroup limit")
    assert memory.available_gib == pytest.approx(min(free, meminfo_gib("MemAvailable")))
    check = modules["env_checks"].check_host_ram(
        env_facts.Env(facts={"finetune_method": "lora", "onnx_precision": "int4"}, memory=memory)
    )
    assert check.detail.startswith(f"{limit:.1f} GiB (container limit), {memory.available_gib:.1f} GiB available; ")
    assert check.status == "fail"
    assert check.fix.startswith("raise this container's memory limit to at least 11.4 GiB, or generate")
