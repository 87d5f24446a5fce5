"""inferences/benchmark.py on the smoke run's models: every backend timed on the same prompts, a JSON report and
a chart, and the thread setting reaching onnxruntime-genai. The figures themselves are not asserted: timings
belong in docs/benchmarks.md, measured, not in a test."""

import json
import os
import shutil
import signal
import subprocess
import sysconfig
from pathlib import Path

import pytest
from conftest import bake, foreground_sigint, run_cli, venv_reading


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
    other = venv_reading(tmp_path / "onnx-env", sysconfig.get_paths()["purelib"])
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


@pytest.mark.pipeline
def test_onnx_on_cuda_runs_in_the_projects_onnx_environment_by_default(smoke_project, python, tmp_path):
    """Without --onnx-python, ONNX on CUDA is measured in the project's .venv-onnx-cuda (setup/onnx_cuda_env.py)
    when it was made. Its genai here is the CPU build, so the worker fails there, and the fix named is that
    environment's own."""
    project = Path(shutil.copytree(smoke_project, tmp_path / "project"))
    onnx_env = venv_reading(project / ".venv-onnx-cuda", sysconfig.get_paths()["purelib"])
    out = tmp_path / "cuda.json"
    result = benchmark(project, python, "--backends", "onnx", "--provider", "cuda", "--out", str(out))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (entry,) = read_report(out)["backends"]
    assert entry["python"] == str(onnx_env)
    assert entry["error"].startswith("onnx on CUDA: ") and "Reinstall .venv-onnx-cuda: " in entry["error"], entry


SHARED_CPU = """
import json, sys
sys.path.insert(0, "inferences")
import benchmark
cpus = benchmark.env_facts.usable_cpus()
cases = [
    dict(threads=cpus, other_cpu_load=0.4),  # housekeeping beside a backend that uses every CPU
    dict(threads=cpus, other_cpu_load=0.6),
    dict(threads=1, other_cpu_load=cpus - 1 + 0.4),  # the CPUs its one thread left free were enough
    dict(threads=1, other_cpu_load=cpus - 1 + 0.6),
    dict(threads=cpus, other_cpu_load=None, load_average=[9.0, 9.0]),  # not measured: the lagging load is no proof
    dict(threads=cpus, other_cpu_load=9.0, error="failed"),
]
print(json.dumps([benchmark.shared_cpu(case) for case in cases]))
"""


def test_shared_cpu_note_follows_the_cpus_other_work_took(tmp_path, python):
    project = bake(tmp_path)
    result = run_cli([python, "-c", SHARED_CPU], project)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [False, True, False, True, False, False]


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


# ---- refusals: each one before any model is loaded (one stderr line, no "[benchmark] ...: loading"), and
# nothing written ----


def refused(result, *expected):
    """One ERROR line naming each of `expected`, exit 1, no traceback: the benchmark stopped before loading."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def benchmark(project, python, *args):
    return run_cli([python, "inferences/benchmark.py", "--tiny", *args], project)


@pytest.mark.pipeline
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # one token has no decode time: it crashed dividing by a rate of 0 after every backend was measured
        (["--new-tokens", "1", "--out", "{tmp}/r.json"], ["--new-tokens 1", "2 or more"]),
        # the chart goes to --out with .png: a .png --out was overwritten by it
        (["--out", "{tmp}/report.png"], ["--out {tmp}/report.png", ".json"]),
        # their bars were drawn at one place in the chart
        (["--backends", "onnx,merged,onnx", "--out", "{tmp}/r.json"], ["'onnx'", "twice"]),
    ],
    ids=["one-new-token", "png-out", "backend-twice"],
)
def test_benchmark_refuses_arguments_before_loading(smoke_project, python, tmp_path, args, expected):
    result = benchmark(smoke_project, python, *(arg.replace("{tmp}", str(tmp_path)) for arg in args))
    refused(result, *(text.replace("{tmp}", str(tmp_path)) for text in expected))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.pipeline
@pytest.mark.parametrize("where", ["/proc/nope/x.json", "/etc/passwd/x.json", "{tmp}"])
def test_benchmark_refuses_an_out_it_cannot_write(smoke_project, python, tmp_path, where):
    out = where.replace("{tmp}", str(tmp_path))  # an existing folder
    result = benchmark(smoke_project, python, "--backends", "onnx", "--out", out)
    refused(result, f"--out {out}: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.pipeline
def test_benchmark_refuses_an_empty_backend_list(smoke_project, python, tmp_path):
    """An empty --backends rewrote the report with no backends and named a chart it had not drawn."""
    out = tmp_path / "r.json"
    out.write_text("earlier report", encoding="utf-8")
    out.with_suffix(".png").write_text("earlier chart", encoding="utf-8")
    for backends in (",", ""):
        refused(benchmark(smoke_project, python, "--backends", backends, "--out", str(out)), "--backends", "no backend")
    assert out.read_text(encoding="utf-8") == "earlier report"
    assert out.with_suffix(".png").read_text(encoding="utf-8") == "earlier chart"


@pytest.mark.pipeline
def test_benchmark_removes_an_earlier_chart_when_it_draws_none(smoke_project, python, tmp_path):
    """Every backend failing (here an onnx interpreter that exits at once) writes a report of the failures and
    no chart: the earlier run's chart must not stay beside it, nor be announced."""
    out = tmp_path / "r.json"
    png = out.with_suffix(".png")
    png.write_text("earlier chart", encoding="utf-8")
    result = benchmark(smoke_project, python, "--backends", "onnx", "--onnx-python", "/bin/false", "--out", str(out))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR: onnx: ")
    assert "error" in read_report(out)["backends"][0]
    assert not png.exists()
    assert str(png) not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no partial files


@pytest.mark.pipeline
def test_benchmark_refuses_an_onnx_python_that_cannot_run(smoke_project, python, tmp_path):
    not_executable = tmp_path / "python"
    not_executable.write_text("", encoding="utf-8")
    for interpreter in ("/nonexistent/python", str(not_executable)):
        result = benchmark(smoke_project, python, "--onnx-python", interpreter, "--out", str(tmp_path / "r.json"))
        refused(result, f"--onnx-python {interpreter}: ")
    assert [p.name for p in tmp_path.iterdir()] == ["python"]


@pytest.fixture(scope="module")
def data_project(tmp_path_factory):
    """A project of its own whose datasets/train.jsonl the tests below spoil; it benchmarks the smoke models."""
    return bake(tmp_path_factory.mktemp("data"), execution_provider="cpu", check_environment=False)


@pytest.mark.pipeline
@pytest.mark.parametrize("case", ["empty", "not json", "no question", "not an object"])
def test_benchmark_names_the_bad_line_of_train_jsonl(data_project, smoke_project, python, tmp_path, case):
    facts = json.loads((data_project / "setup/project.json").read_text(encoding="utf-8"))
    good = json.dumps({facts["question_column"]: "Why?", facts["answer_column"]: "Because."})
    text, expected = {
        "empty": ("\n", "no rows"),
        "not json": (f"{good}\n{good}\n{{oops\n", "line 3: not valid JSON"),
        "no question": (f"{good}\n" + json.dumps({facts["answer_column"]: "Because."}) + "\n",
                        f"line 2: no {facts['question_column']!r} column"),
        "not an object": (f"{good}\n[1, 2]\n", "line 2: not a JSON object"),
    }[case]
    (data_project / "datasets/train.jsonl").write_text(text, encoding="utf-8")
    result = benchmark(data_project, python, "--gen-dir", str(smoke_project / "gen-model/smoke"),
                       "--out", str(tmp_path / "r.json"))
    refused(result, "train.jsonl", expected, "python datasets/prepare.py")
    assert list(tmp_path.iterdir()) == []


def test_benchmark_reports_an_unreadable_outputs_json(data_project, python, tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "outputs.json").write_text("{not json", encoding="utf-8")
    refused(benchmark(data_project, python, "--gen-dir", str(gen)), f"{gen / 'outputs.json'}: ")
    assert [p.name for p in gen.iterdir()] == ["outputs.json"]


@pytest.mark.pipeline
def test_benchmark_refuses_prompts_longer_than_the_context(smoke_project, python, tmp_path):
    """genai refused max_length past its context_length from inside the worker; PyTorch ran past its trained
    positions without a word. Both are refused before loading, naming the backend's context."""
    paths = json.loads((smoke_project / "gen-model/smoke/outputs.json").read_text(encoding="utf-8"))
    folder = smoke_project / "gen-model/smoke"
    onnx = json.loads((folder / paths["onnx"] / "genai_config.json").read_text(encoding="utf-8"))
    merged = json.loads((folder / paths["merged"] / "config.json").read_text(encoding="utf-8"))
    base = json.loads((folder / paths["base"] / "config.json").read_text(encoding="utf-8"))
    contexts = {"onnx": onnx["model"]["context_length"], "merged": merged["max_position_embeddings"],
                "adapter": base["max_position_embeddings"]}
    for backend, context in contexts.items():
        prompt = context - 10  # fits alone; with 16 new tokens it does not
        result = benchmark(smoke_project, python, "--backends", backend, "--prompt-tokens", str(prompt),
                           "--new-tokens", "16", "--out", str(tmp_path / "r.json"))
        refused(result, f"--prompt-tokens {prompt} + --new-tokens 16", f"{backend}'s context of {context} tokens")
    result = benchmark(smoke_project, python, "--backends", "onnx", "--prompt-tokens", "5000")
    refused(result, "--prompt-tokens 5000", "onnx's context")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.pipeline
def test_ctrl_c_stops_the_benchmark_without_a_traceback(smoke_project, python, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while the first backend is measured:
    the worker was interrupted too and printed a traceback of its own."""
    out = tmp_path / "new" / "r.json"
    process = subprocess.Popen(
        [python, "inferences/benchmark.py", "--tiny", "--out", str(out)], cwd=smoke_project,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=foreground_sigint,
    )
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.endswith("warm-up answer\n"):
            break
    assert seen and seen[-1].endswith("warm-up answer\n"), seen
    os.killpg(process.pid, signal.SIGINT)
    stdout, rest = process.communicate(timeout=120)
    stderr = "".join(seen) + rest
    assert process.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "interrupted; nothing written"
    assert list(tmp_path.iterdir()) == []
