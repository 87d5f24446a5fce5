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
import signal
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
        folder = paths[name]
        if (folder / "tokenizer_config.json").is_file() and not project.tokenizer_missing(folder):
            return AutoTokenizer.from_pretrained(folder)
    raise BenchmarkError("no tokenizer found next to any model; run `python fine-tuning/run.py` first")


def read_rows(facts: dict) -> list[dict]:
    """The training rows, each with the question and answer columns the prompts are made of."""
    import prepare
    import sources

    try:
        config = project.load_config()
    except project.ConfigError as error:
        raise BenchmarkError(str(error)) from None
    try:
        train = prepare.Layout(facts, config).train_file
    except prepare.PrepareError as error:
        raise BenchmarkError(f"{project.shown(project.OLIVE_CONFIG)}: {error}; regenerate or fix the config") from None
    if not train.is_file():
        raise BenchmarkError(f"{train}: no prepared data; run `python datasets/prepare.py` first")
    # prepare.py keeps an output that differs from what it would write unless --force
    fix = "make it again with `python datasets/prepare.py <your data> --force`"
    columns = (facts["question_column"], facts["answer_column"])
    try:
        records = list(sources.read_jsonl(train, "utf-8"))
    except sources.SourceError as error:
        raise BenchmarkError(f"{train}: {error}; {fix}") from None
    for where, row in records:
        missing = [column for column in columns if column not in row]
        problem = row.get("__error__") or (
            missing
            and f"no {missing[0]!r} column (setup/project.json's question and answer columns are {columns[0]!r} "
            f"and {columns[1]!r})"
        )
        if problem:
            raise BenchmarkError(f"{train} {where}: {problem}; {fix}")
    if not records:
        raise BenchmarkError(f"{train}: no rows; {fix}")
    return [row for _, row in records]


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


def build_prompts(tokenizer, facts: dict, rows: list[dict], count: int, tokens: int) -> list[list[int]]:
    """count questions (plus one for the warm-up), each padded with the text of the rows after it."""
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
    returncode = start_and_wait(command, env)
    if result_file.is_file():
        return json.loads(result_file.read_text(encoding="utf-8"))
    return {"error": f"the worker process exited with {returncode} and no result (out of memory?)"}


def start_and_wait(command: list[str], env: dict | None) -> int:
    """Run a worker that Ctrl-C does not reach: the parent, interrupted, kills it and says so once.

    Ctrl-C signals the terminal's whole process group, and a worker still starting up would print a traceback.
    An ignored SIGINT stays ignored across exec, and Python then leaves it so: the worker is started while the
    parent ignores it (a Ctrl-C in those few milliseconds is lost). Blocking it is not enough, as the parent's
    other threads (the tokenizer's) still take it; a preexec_fn runs the libraries' fork hooks, which swallow it.
    """
    process = None
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # raises an interrupt that came before
        try:
            process = subprocess.Popen(command, env=env)
        finally:
            signal.signal(signal.SIGINT, previous)
        return process.wait()
    except BaseException:
        if process is not None:
            process.kill()
            process.wait()
        raise


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
            # a rate or time of 0 (a clock too coarse for a tiny model) has no ratio; the figures stay in the JSON
            if reference["decode_tokens_per_s"] > 0:
                result["decode_speedup"] = result["decode_tokens_per_s"] / reference["decode_tokens_per_s"]
            if result["ttft_s"] > 0:
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
            f"note: other work kept the CPUs busy while measuring {', '.join(busy)} (more than its threads left "
            f"free of {env_facts.usable_cpus()} CPUs; other_cpu_load in the JSON): those figures are low; run again "
            "on an idle machine"
        )


def shared_cpu(result: dict) -> bool:
    """Other work needed more CPUs than the backend's threads left free: then its threads waited for a CPU.

    Half a CPU of slack covers the system's own housekeeping. The CPUs busy with other work are measured over
    the timed answers (/proc/stat less the worker's own CPU time). Without that figure (no /proc/stat, or
    answers too short to measure) there is no note: the 1-minute load average lags a minute behind and still
    counts the previous backend.
    """
    others = result.get("other_cpu_load")
    if "error" in result or others is None:
        return False
    return others > max(env_facts.usable_cpus() - (result.get("threads") or 1), 0) + 0.5


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
            raise BenchmarkError(f"--{key.replace('_', '-')} {value}: must be at least 1")
    if chosen["new_tokens"] < 2:
        raise BenchmarkError(
            f"--new-tokens {chosen['new_tokens']}: the decode rate is timed from the first token to the last, "
            "so it needs at least 2; give --new-tokens 2 or more"
        )
    return chosen


def check_arguments(args) -> None:
    """What can be refused at once, before any model or library is loaded."""
    python = args.onnx_python
    if python is not None and not (python.is_file() and os.access(python, os.X_OK)):
        raise BenchmarkError(
            f"--onnx-python {python}: not an executable file; give a Python interpreter, "
            "e.g. .venv-onnx-cuda/bin/python"
        )
    if args.out is not None:
        check_out(args.out)


def check_out(out: Path) -> None:
    """Refuse a report path that cannot be written now rather than after every backend was measured."""
    if out.suffix.lower() == ".png":
        raise BenchmarkError(f"--out {out}: names the JSON report (the chart goes beside it); give a .json path")
    for path in (out, out.with_suffix(".png")):
        if path.is_dir():
            raise BenchmarkError(f"--out {out}: {path} is a folder; give a file path, e.g. {out / 'benchmark.json'}")
    if out.exists() and not os.access(out, os.W_OK):
        raise BenchmarkError(f"--out {out}: the file is read-only; give another path")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the missing folders are made when the report is written
    if not folder.is_dir():
        raise BenchmarkError(f"--out {out}: {folder} is not a folder; give a path in a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise BenchmarkError(
            f"--out {out}: cannot write in {folder} ({error.strerror or error}); give another path"
        ) from None


def choose_specs(args, paths: dict[str, Path], threads: int, gen_dir: Path) -> list[dict]:
    if args.backends is None:
        kinds = available(paths)
        if not kinds:
            if args.tiny:
                raise BenchmarkError(f"{gen_dir}: no models yet; make them with `python setup/smoke.py`")
            raise BenchmarkError(
                f"{gen_dir}: no models yet; make them with `python fine-tuning/run.py`, or time the offline smoke "
                "run's tiny models (gen-model/smoke) with --tiny after `python setup/smoke.py`"
            )
        return [parse_spec(kind, threads) for kind in kinds]
    specs = [parse_spec(text, threads) for text in args.backends.split(",") if text.strip()]
    if not specs:
        raise BenchmarkError(
            f"--backends {args.backends!r}: no backend given; name one or more of adapter, merged, onnx"
        )
    labels = [spec["label"] for spec in specs]
    for label in labels:
        if labels.count(label) > 1:
            # the chart would draw both at one place, and the second measures nothing new
            raise BenchmarkError(f"--backends: {label!r} is given twice; give each backend once")
    for spec in specs:
        chat.check_model(spec["kind"], paths)
    return specs


def check_context(specs: list[dict], paths: dict[str, Path], settings: dict, prompt_length: int | None = None) -> None:
    """Prompt plus answer must fit each model's context: genai refuses a longer search, and PyTorch runs past the
    positions the model was trained on without a word. The warm-up (a full prompt, fewer new tokens) fits when
    the measured answers do. prompt_length: the longest prompt as tokenized, which can pass --prompt-tokens."""
    length = prompt_length or settings["prompt_tokens"]
    for spec in specs:
        context = chat.context_length(spec["kind"], paths)
        try:
            chat.room_for(length, settings["new_tokens"], context, exact=True)
        except chat.ContextFull:
            made = f" (the prompts came to {length} tokens)" if prompt_length else ""
            raise BenchmarkError(
                f"--prompt-tokens {settings['prompt_tokens']} + --new-tokens {settings['new_tokens']}: more than "
                f"{spec['label']}'s context of {context} tokens{made}; lower them"
            ) from None


def benchmark(args) -> int:
    gen_dir = args.gen_dir or (project.GEN_MODEL / "smoke" if args.tiny else project.GEN_MODEL)
    settings = settings_from(args)
    paths = model_paths(gen_dir.resolve(), args.base_dir)
    threads = chat.default_threads() if args.threads is None else args.threads
    specs = choose_specs(args, paths, threads, gen_dir)
    out = args.out or gen_dir / "benchmark.json"
    if args.out is None:  # a given --out was checked with the other arguments
        check_out(out)
    check_context(specs, paths, settings)
    for spec in specs:
        if spec["kind"] == "onnx":
            spec["dtype"] = onnx_precision(paths["onnx"])
    facts = project.load()
    provider = chat.onnx_provider(args.provider, paths["onnx"])
    rows = read_rows(facts)
    prompts = build_prompts(load_tokenizer(paths), facts, rows, settings["prompts"], settings["prompt_tokens"])
    check_context(specs, paths, settings, max(len(prompt) for prompt in prompts))
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
    print_table(results)
    print(f"[benchmark] {write_report(report, out)}")
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"ERROR: {r['label']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def write_report(report: dict, out: Path) -> str:
    """The JSON at out and the chart beside it, both or neither (an interrupt leaves the old pair as it was).

    When every backend failed there is no chart: an earlier run's would sit beside a report it does not show,
    so it is removed."""
    png = out.with_suffix(".png")
    drawn = any("error" not in r for r in report["backends"])
    json_part, png_part = out.with_name(f".{out.name}.partial"), out.with_name(f".{out.stem}.partial.png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        json_part.write_text(json.dumps(report, indent=2), encoding="utf-8")
        if drawn:
            plot(report["backends"], report, png_part)
        os.replace(json_part, out)
        if drawn:
            os.replace(png_part, png)
            return f"{out} and {png}"
        if png.is_file():
            png.unlink()
            return f"{out} (no chart: every backend failed; removed the earlier {png.name})"
        return f"{out} (no chart: every backend failed)"
    except OSError as error:
        raise BenchmarkError(f"--out {out}: cannot write the report ({error}); give another path") from None
    finally:
        json_part.unlink(missing_ok=True)
        png_part.unlink(missing_ok=True)


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
    """The 1-minute load average, recorded beside other_cpu_load (the shared-CPU note goes by that alone)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows
        return None


def busy_cpu_s() -> float | None:
    """CPU seconds spent busy since boot on the CPUs this process may run on (Linux /proc/stat), else None."""
    try:
        lines = Path("/proc/stat").read_text(encoding="utf-8").splitlines()
        cpus = {f"cpu{n}" for n in os.sched_getaffinity(0)}
        ticks = 0
        for line in lines:
            name, *fields = line.split()
            if name in cpus:
                # user nice system idle iowait irq softirq steal: all but idle and iowait; steal is time a
                # hypervisor gave this VM's CPU to another VM, which slows the answers as much
                values = [int(v) for v in fields[:8]]
                ticks += sum(values) - values[3] - values[4]
        return ticks / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError, IndexError):
        return None


def own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


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
    except (chat.Unavailable, chat.ContextFull, BenchmarkError) as error:  # their message says what to do
        result = {"error": str(error)}
    except Exception as error:  # reported by the parent next to the other backends' figures
        result = {"error": f"{type(error).__name__}: {error}"}
    result.setdefault("python", sys.executable)  # which environment failed, when the onnx worker ran in another
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
    # other work over the timed answers: the load average lags by a minute and would count the previous backend
    busy_before, own_before, wall_before = busy_cpu_s(), own_cpu_s(), time.perf_counter()
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
    busy_after, own_after, wall = busy_cpu_s(), own_cpu_s(), time.perf_counter() - wall_before
    other_cpu_load = None
    # /proc/stat counts in clock ticks (10 ms): a shorter window than a second says little
    if busy_before is not None and busy_after is not None and wall >= 1.0:
        other_cpu_load = round(max(0.0, (busy_after - busy_before) - (own_after - own_before)) / wall, 2)
    return {
        "dtype": getattr(backend, "dtype", None) or spec["dtype"],
        "threads": backend.threads,
        "threads_from": "library" if threads == 0 else "set",
        "os_threads": os_threads(),
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_peak_mb": gpu_peak_mb(backend),
        "load_average": [load_before, load_average()],
        # CPUs (of those this process may use) kept busy by other work while the answers were timed
        "other_cpu_load": other_cpu_load,
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
        check_arguments(args)
        return benchmark(args)
    except (BenchmarkError, chat.Unavailable, chat.ContextFull) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # the workers' temporary folder is gone and the report is written only whole (write_report)
        print("interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
