"""inferences/benchmark.py on the smoke run's models: every backend timed on the same prompts, a JSON report and
a chart, and the thread setting reaching onnxruntime-genai. The figures themselves are not asserted: timings
belong in docs/benchmarks.md, measured, not in a test."""

import json
import subprocess
import sysconfig
from pathlib import Path

import pytest
from conftest import bake, run_cli


@pytest.fixture(scope="module")
def smoke_project(smoke):
    # the answers of test_pipeline's default LoRA int4 run, so the session's one smoke run of them serves both
    project, _, _ = smoke(finetune_method="lora", base_model="microsoft/Phi-3-mini-4k-instruct", onnx_precision="int4")
    return project


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text(encoding="utf-8").splitlines() if cpuinfo.is_file() else []
    return {flag for line in lines if line.split(":")[0].strip() in ("flags", "Features")
            for flag in line.split(":", 1)[1].split()}


def read_report(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.pipeline
def test_tiny_benchmark_times_every_backend_on_the_same_prompts(smoke_project, python):
    result = run_cli([python, "inferences/benchmark.py", "--tiny"], smoke_project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    work = smoke_project / "gen-model/smoke"
    report = read_report(work / "benchmark.json")
    backends = {entry["label"]: entry for entry in report["backends"]}
    assert set(backends) == {"adapter", "merged", "onnx"}
    settings = report["settings"]
    for label, entry in backends.items():
        assert "error" not in entry, entry
        for key in ("ttft_s", "decode_tokens_per_s", "total_s", "peak_rss_mb", "size_mb", "load_s"):
            assert entry[key] > 0, (label, key, entry[key])
        runs = entry["runs"]
        assert len(runs) == settings["prompts"] * settings["repeats"]
        # end tokens masked: every answer of every backend has exactly the asked-for length
        assert {run["new_tokens"] for run in runs} == {settings["new_tokens"]}, (label, runs)
    prompt_lengths = {label: [run["prompt_tokens"] for run in entry["runs"]] for label, entry in backends.items()}
    assert len({tuple(lengths) for lengths in prompt_lengths.values()}) == 1, prompt_lengths
    assert all(length >= settings["prompt_tokens"] for length in prompt_lengths["onnx"])
    # the adapter backend loads the base model as well as the adapter
    assert backends["adapter"]["size_mb"] > backends["adapter"]["adapter_mb"] > 0
    assert backends["onnx"]["threads"] == report["threads"] >= 1
    assert backends["onnx"]["threads_from"] == "set"
    assert report["versions"]["onnxruntime-genai"].startswith("onnxruntime-genai ")
    assert "decode_speedup" in backends["onnx"] and backends["merged"]["decode_speedup"] == pytest.approx(1.0)
    assert (work / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # PyTorch backends on a CPU: bf16 where the CPU has bf16 instructions, float32 elsewhere
    expected = "bfloat16" if cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"} else "float32"
    assert backends["adapter"]["dtype"] == backends["merged"]["dtype"] == expected
    for label in backends:
        assert label in result.stdout  # the printed table


@pytest.mark.pipeline
def test_thread_setting_reaches_onnxruntime_genai(smoke_project, python, tmp_path):
    """--threads 1 and @3 are recorded, and the process really runs two more threads with 3 than with 1."""
    out = tmp_path / "threads.json"
    result = run_cli(
        [python, "inferences/benchmark.py", "--tiny", "--threads", "1", "--backends", "onnx,onnx@3,onnx@0",
         "--new-tokens", "4", "--out", str(out)],
        smoke_project,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = read_report(out)
    assert report["threads"] == 1
    backends = {entry["label"]: entry for entry in report["backends"]}
    assert backends["onnx"]["threads"] == 1 and backends["onnx@3"]["threads"] == 3
    assert backends["onnx@0"]["threads_from"] == "library"
    # onnxruntime's intra-op pool runs threads - 1 workers beside the calling thread
    assert backends["onnx@3"]["os_threads"] - backends["onnx"]["os_threads"] == 2
    assert out.with_suffix(".png").is_file()


@pytest.mark.pipeline
def test_onnx_backend_runs_in_the_interpreter_given(smoke_project, python, tmp_path):
    """--onnx-python (on CUDA: .venv-onnx-cuda, setup/onnx_cuda_env.py) runs the onnx worker in another
    environment: here a real venv that reads this one's packages through a .pth file, so the figures come back."""
    venv = tmp_path / "onnx-env"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    other = venv / "bin" / "python"
    site = subprocess.run(
        [other, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    (Path(site) / "main.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    out = tmp_path / "other.json"
    result = run_cli(
        [python, "inferences/benchmark.py", "--tiny", "--backends", "onnx,merged", "--new-tokens", "4",
         "--onnx-python", str(other), "--out", str(out)],
        smoke_project,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    backends = {entry["label"]: entry for entry in read_report(out)["backends"]}
    assert backends["onnx"]["python"] == str(other)
    assert backends["merged"]["python"] == python
    assert backends["onnx"]["worker_versions"]["onnxruntime-genai"].startswith("onnxruntime-genai ")


def test_benchmark_names_the_command_when_no_model_exists(tmp_path, python):
    project = bake(tmp_path, check_environment=False)
    for args, command in (([], "python fine-tuning/run.py"), (["--tiny"], "python setup/smoke.py")):
        result = run_cli([python, "inferences/benchmark.py", *args], project)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR: ") and command in lines[0], lines


def test_benchmark_rejects_a_malformed_backend(tmp_path, python):
    project = bake(tmp_path, check_environment=False)
    result = run_cli([python, "inferences/benchmark.py", "--backends", "onnx:bfloat16"], project)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("ERROR: --backends")
