"""Time the same prompts through each model: time to first token, decode speed, peak memory, size on disk.

    python inferences/benchmark.py                                  # every model in gen-model/
    python inferences/benchmark.py --backends onnx@0,onnx,merged    # genai's default threads next to ours
    python inferences/benchmark.py --tiny                           # the smoke run's models, a few tokens

Every backend gets the same prompt token ids: questions from datasets/train.jsonl in the chat format, padded
with the following rows' text (or cut) to --prompt-tokens. Decoding is greedy with the end tokens masked, so
each backend generates exactly --new-tokens. Each backend runs in its own process, so peak memory is its own;
one short warm-up answer per backend is not counted. A backend is adapter, merged or onnx, optionally with
:float32/:bfloat16/:float16 (PyTorch weights) and @N (CPU threads; @0 is the library's own default).
Writes benchmark.json and benchmark.png into the models' folder (gen-model/ by default).
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

INFERENCES = Path(__file__).resolve().parent
sys.path.insert(0, str(INFERENCES.parent / "setup"))
sys.path.insert(0, str(INFERENCES.parent / "datasets"))
sys.path.insert(0, str(INFERENCES))
import chat  # noqa: E402
import env_facts  # noqa: E402
import project  # noqa: E402

SPEC = re.compile(r"^(adapter|merged|onnx)(?::(float32|bfloat16|float16))?(?:@(\d+))?$")
# --tiny: the smoke run's random models; enough tokens to time, few enough for a test
TINY = {"prompt_tokens": 48, "new_tokens": 16, "prompts": 2, "repeats": 1}
FULL = {"prompt_tokens": 128, "new_tokens": 128, "prompts": 3, "repeats": 1}
# the warm-up answer pays for first-run costs (weight prepacking, allocator growth, lazy thread pools): its
# prefill is full length, its decode need not be
WARMUP_TOKENS = 8
VERSIONS = {
    "torch": ["torch"],
    "transformers": ["transformers"],
    "peft": ["peft"],
    "onnxruntime": ["onnxruntime", "onnxruntime-gpu"],
    "onnxruntime-genai": ["onnxruntime-genai", "onnxruntime-genai-cuda"],
}


class BenchmarkError(RuntimeError):
    """An expected failure; the message says what to do."""


# ---- the parent: prompts, one worker process per backend, report ----


def parse_spec(text: str, threads: int | None) -> dict:
    match = SPEC.match(text.strip())
    if not match:
        raise BenchmarkError(f"--backends: {text!r} is not adapter|merged|onnx[:dtype][@threads]")
    kind, dtype, at = match.groups()
    if kind == "onnx" and dtype:
        raise BenchmarkError(f"--backends: {text!r}: the ONNX model's precision is fixed when it is built")
    return {"label": text.strip(), "kind": kind, "dtype": dtype, "threads": int(at) if at else threads}


def model_paths(gen_dir: Path, base_dir: Path | None) -> dict[str, Path]:
    paths = chat.default_paths(gen_dir)
    if base_dir:
        paths["base"] = base_dir
    return paths


def available(paths: dict[str, Path]) -> list[str]:
    found = []
    for kind in chat.BACKENDS:
        try:
            chat.check_model(kind, paths)
            found.append(kind)
        except chat.MissingModel:
            pass
    return found


def onnx_precision(folder: Path) -> str:
    """The ModelBuilder precision Olive recorded in footprint.json; "onnx" for a model built another way."""
    try:
        nodes = json.loads((folder / "footprint.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "onnx"
    for node in nodes.values():
        if (node.get("from_pass") or "").lower() == "modelbuilder":
            return str((node.get("pass_run_config") or {}).get("precision", "onnx"))
    return "onnx"


def load_tokenizer(paths: dict[str, Path]):
    """The Hugging Face tokenizer the models were trained with (the ONNX folder carries a copy)."""
    from transformers import AutoTokenizer

    for name in ("merged", "base", "onnx"):
        if (paths[name] / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(paths[name])
    raise BenchmarkError("no tokenizer found next to any model; run `python fine-tuning/run.py` first")


def read_rows(facts: dict) -> list[dict]:
    import prepare

    config = json.loads(project.OLIVE_CONFIG.read_text(encoding="utf-8"))
    train = prepare.Layout(facts, config).train_file
    if not train.is_file():
        raise BenchmarkError(f"{train}: no prepared data; run `python datasets/prepare.py` first")
    return [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines() if line.strip()]


def fit_prompt(tokenizer, body: str, tokens: int, facts: dict) -> list[int]:
    """The chat-formatted prompt whose question is the shortest prefix of body that reaches `tokens` ids."""

    def encode(chars: int) -> list[int]:
        return tokenizer(project.prompt_text(body[:chars], facts)).input_ids

    if len(encode(0)) > tokens:
        raise BenchmarkError(f"--prompt-tokens {tokens} is shorter than the chat format itself ({len(encode(0))})")
    low, high = 0, len(body)
    while low < high:
        middle = (low + high) // 2
        if len(encode(middle)) < tokens:
            low = middle + 1
        else:
            high = middle
    ids = encode(low)
    if len(ids) < tokens:
        raise BenchmarkError(f"not enough text in datasets/train.jsonl for --prompt-tokens {tokens}")
    return ids  # a single character can add two ids; the count is recorded either way


def build_prompts(tokenizer, facts: dict, count: int, tokens: int) -> list[list[int]]:
    """count questions (plus one for the warm-up), each padded with the text of the rows after it."""
    rows = read_rows(facts)
    column, answer = facts["question_column"], facts["answer_column"]
    prompts = []
    for i in range(count + 1):
        following = rows[i:] + rows[:i]
        texts = [str(following[0][column])]
        for row in following[1:]:
            if sum(len(t) for t in texts) > tokens * 8:  # plenty: no tokenizer packs 8 characters per id here
                break
            texts += [str(row[column]), str(row[answer])]
        prompts.append(fit_prompt(tokenizer, "\n".join(texts), tokens, facts))
    return prompts


def run_worker(spec: dict, work: Path, index: int, python: Path | None = None) -> dict:
    """Measure one backend in a fresh process (of `python`, default this one's); its peak memory is its own."""
    spec_file, result_file = work / f"spec-{index}.json", work / f"result-{index}.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    print(f"[benchmark] {spec['label']}: loading", file=sys.stderr, flush=True)
    python = python or Path(sys.executable)
    command = [str(python), __file__, "--worker", str(spec_file), str(result_file)]
    # another environment's Python gets no PYTHONPATH meant for this one (setup/onnx_cuda_env.py)
    env = None if python == Path(sys.executable) else chat.onnx_cuda_env.child_environ()
    process = subprocess.run(command, env=env, check=False)
    if result_file.is_file():
        return json.loads(result_file.read_text(encoding="utf-8"))
    return {"error": f"the worker process exited with {process.returncode} and no result (out of memory?)"}


def disk_mb(*folders: Path) -> float:
    return sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file()) / 2**20


def model_size(kind: str, paths: dict[str, Path]) -> dict:
    if kind == "adapter":
        return {"size_mb": disk_mb(paths["base"], paths["adapter"]), "adapter_mb": disk_mb(paths["adapter"])}
    return {"size_mb": disk_mb(paths[kind])}


def versions() -> dict:
    found = {}
    for name, distributions in VERSIONS.items():
        for distribution in distributions:
            try:
                found[name] = f"{distribution} {metadata.version(distribution)}"
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def describe_device(provider: str) -> dict:
    device = {
        "cpu": env_facts.cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores_available": chat.default_threads(),
        "onnx_provider": provider,
    }
    import torch

    if torch.cuda.is_available():
        device["gpu"] = torch.cuda.get_device_name(0)
    return device


def summarize(result: dict) -> dict:
    """Medians over the measured answers; tokens per answer is the same for every answer by construction."""
    runs = result["runs"]
    summary = {key: statistics.median(run[key] for run in runs) for key in ("ttft_s", "decode_tokens_per_s", "total_s")}
    summary.update(prompt_tokens=max(r["prompt_tokens"] for r in runs), new_tokens=min(r["new_tokens"] for r in runs))
    summary["decode_tokens_per_s_range"] = [
        min(r["decode_tokens_per_s"] for r in runs),
        max(r["decode_tokens_per_s"] for r in runs),
    ]
    summary["ttft_s_range"] = [min(r["ttft_s"] for r in runs), max(r["ttft_s"] for r in runs)]
    return summary


def add_speedups(results: list[dict]) -> None:
    """Each backend against the first PyTorch one (merged if measured): the comparison the issue asks for."""
    torch_runs = [r for r in results if "error" not in r and r["kind"] != "onnx"]
    if not torch_runs:
        return
    reference = next((r for r in torch_runs if r["kind"] == "merged"), torch_runs[0])
    for result in results:
        if "error" not in result:
            result["reference"] = reference["label"]
            result["decode_speedup"] = result["decode_tokens_per_s"] / reference["decode_tokens_per_s"]
            result["ttft_speedup"] = reference["ttft_s"] / result["ttft_s"]


def print_table(results: list[dict]) -> None:
    header = [
        "backend",
        "dtype",
        "threads",
        "load s",
        "first token s",
        "decode tok/s",
        "total s",
        "tokens",
        "peak RSS MiB",
        "GPU MiB",
        "disk MiB",
        "decode x",
    ]
    rows = [header]
    for r in results:
        if "error" not in r:
            rows.append(
                [
                    r["label"],
                    r["dtype"],
                    str(r["threads"]) + (" (default)" if r["threads_from"] == "library" else ""),
                    f"{r['load_s']:.1f}",
                    f"{r['ttft_s']:.3f}",
                    f"{r['decode_tokens_per_s']:.1f}",
                    f"{r['total_s']:.2f}",
                    str(int(r["new_tokens"])),
                    f"{r['peak_rss_mb']:.0f}",
                    "-" if r.get("gpu_peak_mb") is None else f"{r['gpu_peak_mb']:.0f}",
                    f"{r['size_mb']:.1f}",
                    f"{r['decode_speedup']:.2f}" if "decode_speedup" in r else "-",
                ]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = [cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells))
    for r in results:
        if "error" in r:
            print(f"{r['label']}: failed, {r['error']}")
    busy = [r["label"] for r in results if shared_cpu(r)]
    if busy:
        print(
            f"note: other work shared the CPU while measuring {', '.join(busy)} (load average above "
            f"{os.cpu_count()} CPUs + 1): those figures are low; run again on an idle machine"
        )


def shared_cpu(result: dict) -> bool:
    """A load average above the CPUs plus one: more than this benchmark (and its thread pool) was running."""
    loads = [load for load in result.get("load_average") or [] if load is not None]
    return bool(loads) and max(loads) > (os.cpu_count() or 1) + 1


def plot(results: list[dict], report: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if "error" not in r]
    labels = [f"{r['label']}\n{r['threads']} threads" for r in done]
    panels = [
        ("time to first token (s)", [r["ttft_s"] for r in done]),
        ("decode (tokens/s)", [r["decode_tokens_per_s"] for r in done]),
        ("peak memory (GiB, RSS)", [r["peak_rss_mb"] / 1024 for r in done]),
        ("size on disk (GiB)", [r["size_mb"] / 1024 for r in done]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for axis, (title, values) in zip(axes, panels, strict=True):
        bars = axis.bar(labels, values, color=["#4c72b0" if r["kind"] == "onnx" else "#dd8452" for r in done])
        axis.bar_label(bars, fmt="%.3g", fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
        axis.grid(axis="y", alpha=0.3)
    settings = report["settings"]
    device = report["device"].get("gpu") or report["device"]["cpu"]
    figure.suptitle(
        f"{device}: {settings['prompt_tokens']}-token prompts, {settings['new_tokens']} new tokens, greedy, batch 1",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)


def settings_from(args) -> dict:
    defaults = TINY if args.tiny else FULL
    chosen = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in defaults.items()}
    for key, value in chosen.items():
        if value < 1:
            raise BenchmarkError(f"--{key.replace('_', '-')} must be at least 1")
    return chosen


def benchmark(args) -> int:
    gen_dir = args.gen_dir or (project.GEN_MODEL / "smoke" if args.tiny else project.GEN_MODEL)
    settings = settings_from(args)
    paths = model_paths(gen_dir.resolve(), args.base_dir)
    threads = chat.default_threads() if args.threads is None else args.threads
    kinds = available(paths)
    if args.backends:
        specs = [parse_spec(text, threads) for text in args.backends.split(",") if text.strip()]
        for spec in specs:
            chat.check_model(spec["kind"], paths)
    elif kinds:
        specs = [parse_spec(kind, threads) for kind in kinds]
    else:
        command = "python setup/smoke.py" if args.tiny else "python fine-tuning/run.py"
        raise BenchmarkError(f"{gen_dir}: no models yet; make them with `{command}`")
    for spec in specs:
        if spec["kind"] == "onnx":
            spec["dtype"] = onnx_precision(paths["onnx"])
    facts = project.load()
    provider = chat.onnx_provider(args.provider, paths["onnx"])
    prompts = build_prompts(load_tokenizer(paths), facts, settings["prompts"], settings["prompt_tokens"])
    results = []
    with tempfile.TemporaryDirectory(prefix="benchmark-") as work:
        for index, spec in enumerate(specs):
            spec.update(settings, provider=provider, prompts=prompts, paths={k: str(v) for k, v in paths.items()})
            # onnx on CUDA runs in .venv-onnx-cuda when the project made it (setup/onnx_cuda_env.py)
            python = (args.onnx_python or chat.onnx_python(provider)) if spec["kind"] == "onnx" else None
            measured = run_worker(spec, Path(work), index, python)
            entry = {"label": spec["label"], "kind": spec["kind"], **measured}
            if "error" not in measured:
                entry.update(summarize(measured), **model_size(spec["kind"], paths))
            results.append(entry)
    add_speedups(results)
    report = {
        "device": describe_device(provider),
        "versions": versions(),
        "threads": threads,
        "settings": {
            **settings,
            "greedy": True,
            "end_tokens_masked": True,
            "batch": 1,
            "warmup_answers": 1,
            "warmup_new_tokens": min(WARMUP_TOKENS, settings["new_tokens"]),
        },
        "backends": results,
    }
    out = args.out or gen_dir / "benchmark.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print_table(results)
    if any("error" not in r for r in results):
        plot(results, report, out.with_suffix(".png"))
    print(f"[benchmark] {out} and {out.with_suffix('.png')}")
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"ERROR: {r['label']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


# ---- the worker: one backend in its own process ----


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def os_threads() -> int | None:
    """Threads this process runs now: shows that the thread setting reached the runtime's pool."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def gpu_peak_mb(backend) -> float | None:
    if getattr(backend, "device", None) == "cuda":
        return backend.torch.cuda.max_memory_allocated() / 2**20
    if getattr(backend, "provider", None) == "cuda":
        # genai reports no allocator peak; ORT's arena keeps what it grew to, so the process's use now is it
        try:
            output = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        for line in output.splitlines():
            pid, used = (part.strip() for part in line.split(","))
            if pid == str(os.getpid()):
                return float(used)
    return None


def load_average() -> float | None:
    """The 1-minute load average: above the core count, other work shared the CPU and the figures are low."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows
        return None


def time_answer(backend, prompt: list[int], new_tokens: int) -> dict:
    stamps: list[float] = []
    started = time.perf_counter()
    ids = backend.generate(prompt, new_tokens, on_token=lambda _: stamps.append(time.perf_counter()), ignore_eos=True)
    total = time.perf_counter() - started
    decode_s = stamps[-1] - stamps[0]
    return {
        "prompt_tokens": len(prompt),
        "new_tokens": len(ids),
        "ttft_s": stamps[0] - started,
        # tokens after the first over the time after the first: the steady per-token speed
        "decode_tokens_per_s": (len(stamps) - 1) / decode_s if decode_s > 0 else 0.0,
        "total_s": total,
    }


def worker(spec_file: Path, result_file: Path) -> int:
    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    try:
        result = measure(spec)
    except Exception as error:  # reported by the parent next to the other backends' figures
        result = {"error": f"{type(error).__name__}: {error}"}
    result_file.write_text(json.dumps(result), encoding="utf-8")
    return 1 if "error" in result else 0


def measure(spec: dict) -> dict:
    paths = {name: Path(path) for name, path in spec["paths"].items()}
    load_before = load_average()
    started = time.perf_counter()
    threads = spec["threads"]
    backend = chat.load_backend(spec["kind"], paths, spec["provider"], threads, spec["dtype"])
    load_s = time.perf_counter() - started
    print(f"[benchmark] {spec['label']}: loaded in {load_s:.1f} s, warm-up answer", file=sys.stderr, flush=True)
    warmup, measured = spec["prompts"][0], spec["prompts"][1:]
    time_answer(backend, warmup, min(WARMUP_TOKENS, spec["new_tokens"]))
    runs = []
    for repeat in range(spec["repeats"]):
        for i, prompt in enumerate(measured):
            runs.append(time_answer(backend, prompt, spec["new_tokens"]))
            print(
                f"[benchmark] {spec['label']}: answer {i + 1}/{len(measured)} (repeat {repeat + 1}): "
                f"first token {runs[-1]['ttft_s']:.3f} s, {runs[-1]['decode_tokens_per_s']:.1f} tokens/s",
                file=sys.stderr,
                flush=True,
            )
    return {
        "dtype": getattr(backend, "dtype", None) or spec["dtype"],
        "threads": backend.threads,
        "threads_from": "library" if threads == 0 else "set",
        "os_threads": os_threads(),
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_peak_mb": gpu_peak_mb(backend),
        "load_average": [load_before, load_average()],
        # the worker's own interpreter and packages: the onnx backend may run in another environment
        "python": sys.executable,
        "worker_versions": versions(),
        "runs": runs,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", help="comma-separated, e.g. onnx@0,onnx,merged:bfloat16 (default: every model)")
    parser.add_argument("--tiny", action="store_true", help="the smoke run's models (gen-model/smoke), few tokens")
    parser.add_argument("--gen-dir", type=Path, help="folder holding the models (default gen-model/)")
    parser.add_argument("--base-dir", type=Path, help="base model for the adapter (default: the project's)")
    parser.add_argument("--prompt-tokens", type=int, help=f"prompt length in tokens (default {FULL['prompt_tokens']})")
    parser.add_argument("--new-tokens", type=int, help=f"tokens generated per answer (default {FULL['new_tokens']})")
    parser.add_argument("--prompts", type=int, help=f"questions per repeat (default {FULL['prompts']})")
    parser.add_argument("--repeats", type=int, help=f"times through the questions (default {FULL['repeats']})")
    parser.add_argument("--threads", type=int, help="CPU threads (default: physical cores; 0: the library's default)")
    parser.add_argument("--provider", choices=("cpu", "cuda"), help="ONNX provider (default: the model's own)")
    parser.add_argument("--out", type=Path, help="JSON report (default <models folder>/benchmark.json; PNG beside)")
    parser.add_argument(
        "--onnx-python",
        type=Path,
        help="interpreter for the onnx backend (default: .venv-onnx-cuda's on CUDA when it exists, else this one)",
    )
    parser.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 0:
        parser.error("--threads must be 0 (the library's default) or more")
    if args.worker:
        return worker(*args.worker)
    try:
        return benchmark(args)
    except (BenchmarkError, chat.Unavailable) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
