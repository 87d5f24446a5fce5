"""Training throughput of this project's LoRA/QLoRA settings, measured through Olive's own pass.

    python setup/benchmark_train.py                    # full-size random model of the base model (CUDA GPU)
    python setup/benchmark_train.py --compare seed     # the CookBook seed settings, then this config's
    python setup/benchmark_train.py --compare seed --compare b4:per_device_train_batch_size=4,max_seq_len=1024
    python setup/benchmark_train.py --set per_device_train_batch_size=4 --set gradient_checkpointing=false
    python setup/benchmark_train.py --tiny             # tiny model, seconds on a CPU
    python setup/benchmark_train.py --json gen-model/benchmark-train.json

Every setting comes from fine-tuning/olive-config.json, and Olive applies it: Olive builds the pass config
(its defaults included, e.g. QLoRA's paged_adamw_32bit optimizer), the config's HfModel handler is the input
model, and the pass itself runs as `olive run` runs it: it loads the model (torch_dtype, device_map "auto",
bitsandbytes 4-bit for QLoRA), freezes it, turns on gradient checkpointing, adds the peft adapters, builds
TrainingArguments, its data collator and transformers.Trainer, and trains. Three things differ:
- the weights are random: a model of the real dimensions and architecture is written to a folder first
  (no download; --tiny: setup/tiny_model.py's model);
- the data are random token ids, every sample max_seq_len long: the longest a sample can be, so the memory
  peak is the one a run must fit (real line-by-line rows are shorter and padded per batch);
- max_steps is warm-up + timed steps, there is no evaluation (the timed steps are training only) and no
  progress bar.

tokens/s = batch x gradient_accumulation_steps x max_seq_len x timed steps / their wall time, from the end of
the last warm-up step to the end of the last step. Model FLOPs per token are 4 N (N: the base model's
parameters; forward 2 N, backward through the frozen weights 2 N; attention scores not counted); with gradient
checkpointing the hardware runs the forward twice, 6 N. Utilisation divides by the matmul rate measured here in
the training dtype. Each --compare run is a fresh process, so each has its own memory peak; a column that fails
(out of memory, say) is recorded and the next one runs, and --json is rewritten after every column.
"""

import argparse
import copy
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETUP = Path(__file__).resolve().parent
sys.path.insert(0, str(SETUP))
sys.path.insert(0, str(SETUP.parent / "fine-tuning"))
import project  # noqa: E402
import tiny_model  # noqa: E402
from env_facts import cpu_model, installed_version, usable_cpus  # noqa: E402

TRAINING_PASSES = ("lora", "qlora")
# the real models' initializer_range (the tiny model's 0.2 is there to vary greedy decoding in the smoke run)
FULL_INIT_STD = 0.02
DEFAULT_STEPS = {"tiny": (1, 2), "full": (2, 6)}  # (warm-up, timed) optimizer steps
# The Phi-3 CookBook's LoRA recipe this config grew from; --compare seed runs it beside the config's settings.
SEED = {"per_device_train_batch_size": 1, "gradient_checkpointing": False, "max_seq_len": 2048}
DATA_KEYS = {"max_seq_len", "strategy", "pad_to_max_len", "drop_short_sequences", "use_attention_mask"}
PASS_KEYS = {
    "r",
    "alpha",
    "lora_dropout",
    "target_modules",
    "modules_to_save",
    "torch_dtype",
    "device_map",
    "allow_tf32",
    "ephemeral_gpu_offload",
    "compute_dtype",
    "double_quant",
    "quant_type",
}
# (matrix size, seconds) of the matmul that measures the peak rate
MATMUL = {"cuda": (8192, 1.0), "cpu": (2048, 1.0), "tiny": (512, 0.3)}
MARKER = "benchmark-model.json"
GIB = 2**30
PACKAGES = ("torch", "transformers", "peft", "accelerate", "olive-ai", "bitsandbytes", "datasets")


class BenchmarkError(Exception):
    pass


def _count(parameters: int) -> str:
    return f"{parameters / 1e9:.3f} B" if parameters >= 1e9 else f"{parameters / 1e6:.2f} M"


# ---------------------------------------------------------------- settings (standard library only)


def parse_value(text: str):
    """JSON where it parses (numbers, true/false, lists), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_set(item: str, flag: str = "--set") -> tuple[str, str, object]:
    """'key=value' -> (where, key, value); where is pass, training_args or data (a prefix picks it).

    flag names the option the item came from in the error message.
    """
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise BenchmarkError(f"{flag}: {item!r} is not KEY=VALUE, e.g. per_device_train_batch_size=4")
    where, dot, name = key.strip().rpartition(".")
    if dot and where not in ("pass", "training_args", "data"):
        raise BenchmarkError(f"{flag}: {item!r}: the prefix must be pass., training_args. or data.")
    if not dot:
        where = "data" if name in DATA_KEYS else "pass" if name in PASS_KEYS else "training_args"
    return where, name, parse_value(value.strip())


def parse_compare(items: list[str], tiny: bool) -> list[tuple[str, list[str]]]:
    """--compare items -> (label, KEY=VALUE overrides) per run, in order.

    'seed' is the CookBook's settings and LABEL:KEY=VALUE,KEY=VALUE any other set of overrides (a comma starts a
    new override only before KEY=, so JSON lists survive); 'config', the config as it is, runs where it is named,
    or last.
    """
    plans, labels = [], set()
    for item in items:
        label, sep, rest = item.partition(":")
        label = label.strip()
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
            raise BenchmarkError(f"--compare {item}: start with a label of letters, digits, '.', '_' or '-'")
        if label in labels:
            raise BenchmarkError(f"--compare {item}: the label {label!r} is used twice")
        labels.add(label)
        if label in ("seed", "config") and sep:
            raise BenchmarkError(f"--compare {item}: {label!r} names fixed settings; give the overrides another label")
        if label == "config":
            plans.append((label, []))
            continue
        if label == "seed":
            seed = dict(SEED, max_seq_len=tiny_model.SEQ_LEN) if tiny else SEED
            sets = [f"{k}={json.dumps(v)}" for k, v in seed.items()]
        elif sep and rest.strip():
            sets = [part.strip() for part in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", rest)]
            for part in sets:
                parse_set(part, f"--compare {item}")
        else:
            raise BenchmarkError(
                f"--compare {item}: expected seed, config or LABEL:KEY=VALUE[,KEY=VALUE...], "
                "e.g. b4:per_device_train_batch_size=4,gradient_checkpointing=false"
            )
        plans.append((label, sets))
    return plans if "config" in labels else [*plans, ("config", [])]


def training_pass(config: dict) -> tuple[str, dict]:
    for name, spec in (config.get("passes") or {}).items():
        if str(spec.get("type", "")).lower() in TRAINING_PASSES:
            return name, spec
    raise BenchmarkError(
        "the Olive config has no LoRA/QLoRA pass (a convert-only project: finetune_method none); nothing trains"
    )


def _train_data(config: dict, spec: dict) -> dict:
    name = spec.get("train_data_config")
    found = [d for d in config.get("data_configs", []) if d.get("name") == name]
    if not found:
        raise BenchmarkError(f"the training pass names train_data_config {name!r}, which data_configs lacks")
    return found[0]


def derive_config(config: dict, model_dir: Path, sets: list, total_steps: int) -> dict:
    """The project's config reduced to its training pass, with the overrides and the benchmark's changes."""
    derived = copy.deepcopy(config)
    name, _ = training_pass(derived)
    derived["passes"] = {name: derived["passes"][name]}
    spec = derived["passes"][name]
    spec.setdefault("training_args", {})
    derived["input_model"]["model_path"] = str(model_dir)
    for data_config in derived.get("data_configs", []):
        files = data_config.get("load_dataset_config", {}).get("data_files")
        if isinstance(files, str):
            data_config["load_dataset_config"]["data_files"] = str(project.ROOT / files)
    targets = {
        "pass": spec,
        "training_args": spec["training_args"],
        "data": _train_data(derived, spec).setdefault("pre_process_data_config", {}),
    }
    for where, key, value in sets:
        targets[where][key] = value
    spec["training_args"].update(max_steps=total_steps, disable_tqdm=True)
    return derived


def model_size(args) -> str:
    return "tiny" if args.tiny else "full"


def all_sets(args) -> list:
    tiny = [("data", "max_seq_len", tiny_model.SEQ_LEN)] if args.tiny else []
    return tiny + [parse_set(item) for item in args.set]


# ---------------------------------------------------------------- the random model


def _corpus(config: dict, spec: dict, scratch: Path) -> Path:
    """The prepared training file (the tiny tokenizer is trained on it), or an empty one: ids are random anyway."""
    files = _train_data(config, spec).get("load_dataset_config", {}).get("data_files")
    path = project.ROOT / files if isinstance(files, str) else None
    if path is not None and path.is_file():
        return path
    empty = scratch / "corpus.jsonl"
    empty.write_text("", encoding="utf-8")
    return empty


def _count_parameters(model_dir: Path) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def _build_full(facts: dict, corpus: Path, model_dir: Path, device: str) -> None:
    import torch
    from transformers import Phi3ForCausalLM

    # the real model's dimensions (setup/project.json "architecture" "full_size", from its config.json on the Hub);
    # RoPE scaling, partial rotary, tied embeddings, KV heads and the sliding window come from the same entry
    dims = facts["architecture"]["full_size"]
    tokenizer = tiny_model.build_tokenizer(facts, corpus, model_dir)
    config = tiny_model.model_config(facts, tokenizer, {**dims, "initializer_range": FULL_INIT_STD})
    torch.manual_seed(0)
    # initialised where it will train: seconds on a GPU, minutes for 3.8 B parameters on a CPU
    with torch.device(device):
        model = Phi3ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(model_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def ensure_model(model_dir: Path, facts: dict, config: dict, size: str, device: str) -> int:
    """A random model of the base model's architecture in model_dir (built once); returns its parameter count."""
    marker = model_dir / MARKER
    wanted = {"base_model": facts["base_model"], "size": size}
    if marker.is_file():
        found = json.loads(marker.read_text(encoding="utf-8"))
        if {k: found.get(k) for k in wanted} != wanted:
            raise BenchmarkError(
                f"{model_dir} holds a {found.get('size')} {found.get('base_model')}, not a {size} "
                f"{facts['base_model']}; choose another --model-dir"
            )
        return int(found["parameters"])
    if model_dir.exists() and any(model_dir.iterdir()):
        raise BenchmarkError(f"{model_dir}: not empty and not a benchmark model folder; choose another --model-dir")
    model_dir.mkdir(parents=True, exist_ok=True)
    _, spec = training_pass(config)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        corpus = _corpus(config, spec, Path(scratch))
        if size == "tiny":
            tiny_model.build(facts, corpus, model_dir)
        else:
            _build_full(facts, corpus, model_dir, device)
    parameters = _count_parameters(model_dir)
    marker.write_text(json.dumps({**wanted, "parameters": parameters}, indent=2), encoding="utf-8")
    print(
        f"[benchmark] random {size} {facts['base_model']}: {_count(parameters)} parameters in "
        f"{model_dir} ({time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    return parameters


# ---------------------------------------------------------------- measuring


class Memory:
    """Peak memory since the last reset: the CUDA allocator's peaks summed over the GPUs (device_map "auto" may
    spread the model), or on a CPU the process's RSS high-water mark. On a GPU the host's share is recorded too:
    the process's RSS high-water mark over its whole life, model loading included, which the host's RAM must hold.
    """

    def __init__(self, torch, cuda: bool):
        self.torch, self.cuda = torch, cuda
        self.gpus = range(torch.cuda.device_count()) if cuda else range(0)

    def reset(self, release: bool = False) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            if release:  # before training only: the matmul's cached blocks are not training's
                self.torch.cuda.empty_cache()
            for gpu in self.gpus:
                self.torch.cuda.reset_peak_memory_stats(gpu)
            return
        try:  # Linux: "5" resets this process's VmHWM, so building the random model does not count
            Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
        except OSError:
            pass

    def read(self) -> dict:
        if self.cuda:
            cuda = self.torch.cuda
            return {
                "allocated_gib": sum(cuda.max_memory_allocated(gpu) for gpu in self.gpus) / GIB,
                "reserved_gib": sum(cuda.max_memory_reserved(gpu) for gpu in self.gpus) / GIB,
                "host_rss_gib": self._rss_gib(),
            }
        return {"rss_gib": self._rss_gib()}

    @staticmethod
    def _rss_gib() -> float:
        try:
            status = Path("/proc/self/status").read_text(encoding="ascii")
            return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024 / GIB
        except (OSError, AttributeError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def matmul_rate(torch, device: str, dtype, size: int, seconds: float) -> float:
    """FLOP/s of a square matmul in the training dtype on this device: the peak the utilisation divides by.

    It times F.linear, the op every nn.Linear runs: on CPUs without bf16 instructions (AMD EPYC, AVX2)
    torch.mm on two row-major bf16 matrices takes a path 10-50x slower than linear's, so an mm rate put
    utilisation above 100 %.
    """
    linear = torch.nn.functional.linear
    a = torch.randn(size, size, device=device, dtype=dtype)
    weight = torch.randn(size, size, device=device, dtype=dtype)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        linear(a, weight)
    sync()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(10):
            linear(a, weight)
        sync()
        count += 10
    return 2 * size**3 * count / (time.perf_counter() - started)


def measure_matmul(torch, settings: dict, tiny: bool, cuda: bool) -> dict:
    name = settings["pass"].get("compute_dtype") or settings["pass"]["torch_dtype"]
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
    size, seconds = MATMUL["tiny" if tiny else "cuda" if cuda else "cpu"]
    saved = torch.backends.cuda.matmul.allow_tf32
    # Olive sets allow_tf32 for training; it decides float32's matmul rate on a GPU
    torch.backends.cuda.matmul.allow_tf32 = bool(settings["pass"].get("allow_tf32"))
    try:
        rate = matmul_rate(torch, "cuda" if cuda else "cpu", dtype, size, seconds)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return {"matmul_dtype": name, "matmul_size": size, "matmul_flops": rate}


def synthetic_dataset(vocab_size: int, seq_len: int, rows: int):
    """Rows shaped as Olive's text-generation data: input_ids, attention_mask, labels (= input_ids)."""
    import torch

    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (rows, seq_len), generator=generator)
    dataset = Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(), "labels": ids.tolist()}
    )
    dataset.set_format("torch")
    return dataset


def _numel(param) -> int:
    # a bitsandbytes 4-bit weight stores two values per byte; its quant_state keeps the real shape
    state = getattr(param, "quant_state", None)
    return math.prod(state.shape) if state is not None else param.numel()


def make_clock(transformers, torch, memory: Memory, warmup: int, steps: int, cuda: bool):
    """A TrainerCallback: stamps the end of each optimizer step, reads the memory peaks, and records what the
    Trainer and peft really got."""

    class Clock(transformers.TrainerCallback):
        def __init__(self):
            self.stamps: list[float] = []
            self.memory: dict = {}
            self.seen: dict = {}
            self.log_history: list = []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.seen = describe_training(args, model)

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            if state.global_step == warmup:
                self.memory["load_and_warmup"] = memory.read()
                memory.reset()
            if state.global_step >= warmup:
                self.stamps.append(time.perf_counter())
            if state.global_step == warmup + steps:
                self.memory["timed"] = memory.read()

        def on_train_end(self, args, state, control, **kwargs):
            self.log_history = list(state.log_history)

    return Clock()


def describe_training(args, model) -> dict:
    """What the Trainer and peft actually use, read back from them (not from the config)."""
    names = (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "gradient_checkpointing",
        "optim",
        "bf16",
        "fp16",
        "tf32",
        "torch_compile",
        "use_liger_kernel",
        "learning_rate",
        "lr_scheduler_type",
        "max_grad_norm",
        "max_steps",
        "eval_strategy",
    )
    trainer = {name: getattr(args, name) for name in names}
    trainer = {
        k: str(getattr(v, "value", v)) if k in ("optim", "lr_scheduler_type", "eval_strategy") else v
        for k, v in trainer.items()
    }
    lora = model.peft_config["default"]
    targets = lora.target_modules
    peft = {
        "r": lora.r,
        "lora_alpha": lora.lora_alpha,
        "lora_dropout": lora.lora_dropout,
        "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
    }
    params = list(model.parameters())
    counts = {
        "trainable": sum(_numel(p) for p in params if p.requires_grad),
        "total": sum(_numel(p) for p in params),
        "quantized_4bit": any(getattr(p, "quant_state", None) is not None for p in params),
    }
    adapters = [p for n, p in model.named_parameters() if "lora_A" in n]
    # peft keeps adapters in float32 over a bf16 model unless told otherwise; the attention kernel is the
    # loader's choice: both change speed and memory, so both are recorded
    kernels = {
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "adapter_dtype": str(adapters[0].dtype).removeprefix("torch.") if adapters else None,
    }
    return {"trainer": trainer, "peft": peft, "parameters": counts, "kernels": kernels}


# ---------------------------------------------------------------- one run through Olive's pass


def _olive_pass(derived: dict):
    """The pass object and input model handler, built by Olive from the derived config as `olive run` does."""
    from olive.hardware.accelerator import AcceleratorSpec, Device
    from olive.package_config import OlivePackageConfig
    from olive.workflows.run.config import RunConfig

    run_config = RunConfig.parse_file_or_obj(copy.deepcopy(derived))  # Olive edits the dict it is given
    ((name, pass_configs),) = run_config.passes.items()
    pass_config = pass_configs[0]
    pass_cls = OlivePackageConfig.load_default_config().import_pass_module(pass_config.type)
    accelerator = run_config.engine.host.config.accelerators[0]
    spec = AcceleratorSpec(
        accelerator_type=Device(accelerator.device), execution_provider=accelerator.execution_providers[0]
    )
    config = pass_cls.generate_config(spec, pass_config.config, {}, True)
    if not pass_cls.validate_config(config, spec):
        raise BenchmarkError(f"Olive prunes pass {name} for {spec}: it would not train")
    return pass_cls(spec, config, accelerator.device), run_config.input_model.create_model()


def _check_config(derived: dict) -> None:
    """fine-tuning/check_config.py on the derived config: a --set typo fails here, not silently in Olive."""
    import check_config

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "olive-config.json"
        path.write_text(json.dumps(derived), encoding="utf-8")
        problems = check_config.check(path)
    if problems:
        raise BenchmarkError("; ".join(problems))


def _pass_settings(the_pass, derived: dict) -> dict:
    """The pass settings as Olive resolved them (its defaults filled in), and the training data options."""
    config = the_pass.config
    keys = ("r", "alpha", "lora_dropout", "target_modules", "torch_dtype", "allow_tf32", "device_map")
    keys += ("compute_dtype", "quant_type", "double_quant")
    settings = {k: getattr(config, k) for k in keys if hasattr(config, k)}
    settings["type"] = type(the_pass).__name__
    training_args = config.training_args.model_dump() if config.training_args else {}
    _, spec = training_pass(derived)
    data = _train_data(derived, spec)["pre_process_data_config"]
    data = {k: data.get(k) for k in ("strategy", "max_seq_len", "pad_to_max_len")}
    return json.loads(json.dumps({"pass": settings, "training_args": training_args, "data": data}, default=str))


def device_info(torch, cuda: bool) -> dict:
    if cuda:
        props = torch.cuda.get_device_properties(0)
        return {
            "kind": "cuda",
            "name": props.name,
            "gpus": torch.cuda.device_count(),
            "memory_gib": props.total_memory / GIB,
            "compute_capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
        }
    usable = usable_cpus()
    return {
        "kind": "cpu",
        "name": cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
    }


def versions() -> dict:
    found = {name: installed_version(name) for name in PACKAGES}
    return {"python": platform.python_version(), **found}


def _quiet(transformers) -> None:
    """Library chatter off (deprecation notices, progress bars); warnings about the run itself stay."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()


def train(the_pass, input_model, dataset, clock) -> None:
    """Olive's pass.run, with the synthetic data in place of its datasets and the clock in its Trainer."""
    from unittest import mock

    from transformers.trainer import Trainer

    original_init = Trainer.__init__

    # the class itself is patched: transformers' lazy module can hand Olive a Trainer attribute set before a
    # patch of the name transformers.Trainer
    def init_with_clock(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_callback(clock)

    with (
        tempfile.TemporaryDirectory() as output,
        mock.patch.object(Trainer, "__init__", init_with_clock),
        mock.patch.object(the_pass, "get_datasets", lambda _config: (dataset, None)),
    ):
        the_pass.run(input_model, output)


def figures(clock, steps: int, seq_len: int, base_parameters: int, rate: dict) -> dict:
    if len(clock.stamps) != steps + 1 or "timed" not in clock.memory:
        raise BenchmarkError(f"the Trainer ran {max(len(clock.stamps) - 1, 0)} timed steps, not {steps}")
    trainer = clock.seen["trainer"]
    tokens_per_step = trainer["per_device_train_batch_size"] * trainer["gradient_accumulation_steps"] * seq_len
    elapsed = clock.stamps[-1] - clock.stamps[0]
    tokens_per_s = tokens_per_step * steps / elapsed
    # the forward runs twice per step under gradient checkpointing
    hardware_factor = 6 if trainer["gradient_checkpointing"] else 4
    warm, timed = clock.memory["load_and_warmup"], clock.memory["timed"]
    losses = [entry["train_loss"] for entry in clock.log_history if "train_loss" in entry]
    return {
        "tokens_per_s": tokens_per_s,
        "timed_seconds": elapsed,
        "step_seconds": [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)],
        "tokens_per_step": tokens_per_step,
        "peak_memory": {k: max(warm[k], timed[k]) for k in timed},
        "timed_peak_memory": timed,
        "base_parameters": base_parameters,
        "trainable_parameters": clock.seen["parameters"]["trainable"],
        "total_parameters": clock.seen["parameters"]["total"],
        "train_loss": losses[-1] if losses else None,
        **rate,
        "model_flops_per_token": 4 * base_parameters,
        "model_flops": 4 * base_parameters * tokens_per_s,
        "model_flops_utilisation": 4 * base_parameters * tokens_per_s / rate["matmul_flops"],
        "hardware_flops_per_token": hardware_factor * base_parameters,
        "hardware_flops_utilisation": hardware_factor * base_parameters * tokens_per_s / rate["matmul_flops"],
    }


def run_benchmark(args, facts: dict, config: dict, model_dir: Path, label: str) -> dict:
    """Train warm-up + timed steps through Olive's pass in this process and return every figure."""
    import logging

    import torch
    import transformers

    cuda = torch.cuda.is_available()
    _quiet(transformers)
    warmup, steps = args.warmup, args.steps
    derived = derive_config(config, model_dir, all_sets(args), warmup + steps)
    _check_config(derived)  # before the model is built: a typo costs seconds
    dropped = [] if cuda else project.drop_gpu_only(training_pass(derived)[1]["training_args"])
    base_parameters = ensure_model(model_dir, facts, config, model_size(args), "cuda" if cuda else "cpu")
    the_pass, input_model = _olive_pass(derived)
    settings = _pass_settings(the_pass, derived)
    rate = measure_matmul(torch, settings, args.tiny, cuda)

    extra = settings["training_args"].get("extra_args") or {}
    # TrainingArguments' own defaults where the config sets nothing
    rows = int(extra.get("per_device_train_batch_size", 8)) * int(extra.get("gradient_accumulation_steps", 1))
    seq_len = int(settings["data"]["max_seq_len"])
    vocab = transformers.AutoConfig.from_pretrained(model_dir).vocab_size
    dataset = synthetic_dataset(vocab, seq_len, rows * (warmup + steps))
    memory = Memory(torch, cuda)
    clock = make_clock(transformers, torch, memory, warmup, steps, cuda)
    print(
        f"[benchmark] {label}: {warmup} warm-up + {steps} timed steps of {rows} x {seq_len} tokens through "
        f"Olive's {settings['pass']['type']} pass",
        flush=True,
    )
    logging.getLogger("olive").setLevel(logging.WARNING)  # Olive sets its own level when its config loads
    memory.reset(release=True)
    train(the_pass, input_model, dataset, clock)
    return {
        "label": label,
        "overrides": [f"{where}.{key}={json.dumps(value)}" for where, key, value in all_sets(args)],
        "settings": {**settings, **clock.seen},
        "changed_for_benchmark": [
            "random weights (no download)",
            f"random token ids, every sample {seq_len} tokens",
            f"max_steps {warmup + steps} ({warmup} warm-up + {steps} timed)",
            "no evaluation, no progress bar",
            *([f"no CUDA GPU: without {', '.join(dropped)}"] if dropped else []),
        ],
        "results": figures(clock, steps, seq_len, base_parameters, rate),
        "device": device_info(torch, cuda),
        "versions": versions(),
    }


# ---------------------------------------------------------------- report


def _gib(memory: dict) -> str:
    if "allocated_gib" in memory:
        return (
            f"{memory['allocated_gib']:.2f} alloc / {memory['reserved_gib']:.2f} resv, "
            f"host {memory['host_rss_gib']:.2f} RSS"
        )
    return f"{memory['rss_gib']:.2f} RSS"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f} %" if share >= 0.01 else f"{100 * share:.2g} %"


def _flops(value: float) -> str:
    return f"{value / 1e12:.2f} T" if value >= 1e11 else f"{value / 1e9:.2f} G"


def _on(flag) -> str:
    return "on" if flag else "off"


def report_rows(run: dict) -> list[tuple[str, str]]:
    s, r = run["settings"], run["results"]
    trainer, peft = s["trainer"], s["peft"]
    targets = peft["target_modules"]
    targets = ",".join(targets) if len(targets) <= 3 else f"{len(targets)} modules"
    return [
        ("pass", f"{s['pass']['type']} r {peft['r']} alpha {peft['lora_alpha']:g} dropout {peft['lora_dropout']:g}"),
        ("target modules", targets),
        ("dtype / 4-bit base", f"{s['pass']['torch_dtype']} / {'yes' if s['parameters']['quantized_4bit'] else 'no'}"),
        (
            "batch x accum x seq",
            f"{trainer['per_device_train_batch_size']} x "
            f"{trainer['gradient_accumulation_steps']} x {s['data']['max_seq_len']}",
        ),
        ("gradient checkpointing", _on(trainer["gradient_checkpointing"])),
        ("bf16 autocast / compile", f"{_on(trainer['bf16'])} / {_on(trainer.get('torch_compile'))}"),
        ("optimizer", trainer["optim"]),
        ("attention / adapter dtype", f"{s['kernels']['attn_implementation']} / {s['kernels']['adapter_dtype']}"),
        ("tokens/s", _rate(r["tokens_per_s"])),
        ("s per step", f"{r['timed_seconds'] / len(r['step_seconds']):.3f}"),
        ("peak memory GiB", _gib(r["peak_memory"])),
        ("trainable / total params", f"{_count(r['trainable_parameters'])} / {_count(r['total_parameters'])}"),
        ("matmul FLOP/s", f"{_flops(r['matmul_flops'])} ({r['matmul_dtype']} {r['matmul_size']})"),
        ("model FLOP/s (4N)", f"{_flops(r['model_flops'])} = {_percent(r['model_flops_utilisation'])}"),
        (
            "hardware FLOP/s",
            f"{_percent(r['hardware_flops_utilisation'])} "
            f"({r['hardware_flops_per_token'] // r['base_parameters']}N per token)",
        ),
    ]


def print_report(summary: dict) -> None:
    runs = [run for run in summary["runs"] if "failed" not in run]
    device = summary["device"]
    parameters = summary["base_parameters"]
    print(
        f"\n[benchmark] {summary['base_model']} ({summary['size']}, {_count(parameters) if parameters else '?'} "
        f"parameters) on {device['name']}"
    )
    if runs:
        columns = [[label for label, _ in report_rows(runs[0])]]
        columns += [[value for _, value in report_rows(run)] for run in runs]
        headers = ["", *[run["label"] for run in runs]]
        widths = [max(len(x) for x in [h, *col]) for h, col in zip(headers, columns, strict=True)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        for row in range(len(columns[0])):
            print("  ".join(col[row].ljust(w) for col, w in zip(columns, widths, strict=True)).rstrip())
    for run in summary["runs"]:
        if "failed" in run:
            print(f"[benchmark] {run['label']} failed: {run['failed']}")


def summarise(runs: list, facts: dict, args) -> dict:
    done = [run for run in runs if "failed" not in run]
    return {
        "benchmark": "setup/benchmark_train.py",
        "base_model": facts["base_model"],
        "finetune_method": facts.get("finetune_method"),
        "size": model_size(args),
        "base_parameters": done[0]["results"]["base_parameters"] if done else None,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "device": done[0]["device"] if done else {"name": "?"},
        "versions": done[0]["versions"] if done else versions(),
        "runs": runs,
    }


def write_json(path: Path | None, summary: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(summary, indent=2), encoding="utf-8")


# ---------------------------------------------------------------- --compare: one process per run


def _child_command(args, model_dir: Path, label: str, extra_sets: list, result: Path) -> list[str]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--config",
        str(args.config.resolve()),
        "--model-dir",
        str(model_dir),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--_label",
        label,
        "--_result",
        str(result),
    ]
    command += ["--tiny"] * args.tiny + ["--force"] * args.force
    for item in [*args.set, *extra_sets]:
        command += ["--set", item]
    return command


def compare_runs(args, facts: dict, model_dir: Path) -> list:
    """Each column in its own process. A failed column (out of memory, say) is recorded and the next one runs;
    with --json the figures so far are written after every column, so a run cut short keeps them."""
    plans = parse_compare(args.compare, args.tiny)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, extra in plans:
            result = Path(scratch) / f"{label}.json"
            env = dict(project.olive_env(), PYTHONDONTWRITEBYTECODE="1")
            done = subprocess.run(_child_command(args, model_dir, label, extra, result), env=env, check=False)
            if done.returncode == 0 and result.is_file():
                runs.append(json.loads(result.read_text(encoding="utf-8")))
            else:
                failed = f"exit code {done.returncode}; its output is above"
                print(f"[benchmark] {label} failed ({failed}); going on with the next column", flush=True)
                runs.append({"label": label, "overrides": extra, "failed": failed})
            write_json(args.json, summarise(runs, facts, args))
    return runs


# ---------------------------------------------------------------- main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=project.OLIVE_CONFIG, help="Olive config (JSON)")
    parser.add_argument("--tiny", action="store_true", help="setup/tiny_model.py's model, seq 128: a CPU test")
    parser.add_argument("--steps", type=int, help="timed optimizer steps (default: 6, --tiny 2)")
    parser.add_argument("--warmup", type=int, help="untimed optimizer steps first (default: 2, --tiny 1)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a pass, training_args or data setting (JSON value), e.g. "
        "per_device_train_batch_size=4, gradient_checkpointing=false, max_seq_len=1024",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="seed|LABEL:KEY=VALUE,...",
        help="one more column, run in its own process: 'seed' is the CookBook's settings (batch 1, no gradient "
        "checkpointing, seq 2048), LABEL:KEY=VALUE,... the config with those overrides (as --set); repeat it for "
        "more columns; the config as it is runs last, or where '--compare config' puts it",
    )
    parser.add_argument("--json", type=Path, help="write every figure, the device, versions and settings here")
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="keep the random model here and reuse it (default: a "
        "temporary folder in gen-model/benchmark/, deleted afterwards)",
    )
    parser.add_argument("--force", action="store_true", help="run a full-size model even without a CUDA GPU")
    parser.add_argument("--_label", default="config", help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warmup, steps = DEFAULT_STEPS[model_size(args)]
    args.warmup = warmup if args.warmup is None else args.warmup
    args.steps = steps if args.steps is None else args.steps
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1 (the first step carries one-time setup)")
    return args


def refuse_cpu(args, facts: dict) -> None:
    if args.tiny or args.force:
        return
    import torch

    if not torch.cuda.is_available():
        raise BenchmarkError(
            f"no CUDA GPU here: a full-size {facts['base_model']} (3.8 B parameters) trains for minutes per step "
            "on a CPU and hours in all; use --tiny, or --force to run it anyway"
        )


def _benchmark(args, facts: dict, config: dict, model_dir: Path) -> dict | None:
    if args._result:
        run = run_benchmark(args, facts, config, model_dir, args._label)
        args._result.write_text(json.dumps(run, indent=2), encoding="utf-8")
        return None
    if args.compare:
        return summarise(compare_runs(args, facts, model_dir), facts, args)
    return summarise([run_benchmark(args, facts, config, model_dir, "config")], facts, args)


def main(argv=None) -> int:
    args = parse_args(argv)
    scratch = None
    try:
        facts = project.load()
        config = project.load_config(args.config)  # its ConfigError is a ValueError: one ERROR line below
        training_pass(config)
        all_sets(args)
        parse_compare(args.compare, args.tiny)
        refuse_cpu(args, facts)
        model_dir = args.model_dir
        if model_dir is None:
            parent = project.GEN_MODEL / "benchmark"
            parent.mkdir(parents=True, exist_ok=True)
            scratch = model_dir = Path(tempfile.mkdtemp(prefix="random-model-", dir=parent))
        summary = _benchmark(args, facts, config, model_dir.resolve())
    except (BenchmarkError, OSError, ValueError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
            if not any(scratch.parent.iterdir()):
                scratch.parent.rmdir()
    if summary is None:
        return 0
    print_report(summary)
    write_json(args.json, summary)
    if args.json:
        print(f"[benchmark] figures, device, versions and settings: {args.json}")
    failed = [run["label"] for run in summary["runs"] if "failed" in run]
    if failed:
        print(
            f"ERROR: --compare: {', '.join(failed)} failed (output above); the other columns are in the table",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
