"""setup/benchmark_train.py: training throughput through Olive's own LoRA/QLoRA pass, on the tiny model here."""

import json
from pathlib import Path

import pytest
from conftest import bake, run_cli

BENCHMARK = "setup/benchmark_train.py"
# The tiny model (setup/tiny_model.py: hidden 192, 2 layers, 3 heads of 64): per layer qkv_proj is 192 -> 576
# and o_proj 192 -> 192, so LoRA of rank r on both trains r x (192 + 576 + 192 + 192) x 2 parameters.
TINY_LORA_PER_RANK = (192 + 576 + 192 + 192) * 2
QLORA_MODULES = ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    return {method: bake(root / method, finetune_method=method) for method in ("lora", "qlora", "none")}


def edit_config(project: Path, **changes) -> dict:
    """Change the training pass of the baked project's olive-config.json, as a user would."""
    path = project / "fine-tuning/olive-config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    spec = next(s for s in config["passes"].values() if s["type"] in ("LoRA", "QLoRA"))
    for key, value in changes.items():
        (spec["training_args"] if key in spec["training_args"] else spec)[key] = value
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return spec


def benchmark(python, project: Path, *args: str):
    return run_cli([python, BENCHMARK, *args], project, timeout=600)


def run_benchmark(python, project: Path, *args: str) -> dict:
    result = benchmark(python, project, *args, "--json", "out.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (project / "gen-model/benchmark").exists(), "the random model must be cleaned up"
    summary = json.loads((project / "out.json").read_text(encoding="utf-8"))
    summary["stdout"] = result.stdout
    return summary


def assert_sane(run: dict) -> None:
    results = run["results"]
    assert results["tokens_per_s"] > 0 and results["timed_seconds"] > 0
    assert len(results["step_seconds"]) == 2  # --tiny: 2 timed steps after 1 warm-up step
    assert 0 < results["model_flops_utilisation"] < 1
    assert 0 < results["hardware_flops_utilisation"] < 1
    assert results["matmul_flops"] > 0
    assert 0 < results["trainable_parameters"] < results["total_parameters"]
    assert results["total_parameters"] == results["base_parameters"] + results["trainable_parameters"]
    assert results["peak_memory"]["rss_gib"] > 0  # no GPU here: the RSS high-water mark
    assert results["train_loss"] > 0


@pytest.mark.pipeline
def test_lora_settings_follow_the_config_and_compare_seed(projects, python):
    """A changed r, alpha, dropout and accumulation reach peft and the Trainer; the seed row differs only where
    the seed settings say."""
    project = projects["lora"]
    spec = edit_config(project, r=16, alpha=32.0, lora_dropout=0.05, gradient_accumulation_steps=2)
    b2 = "b2:per_device_train_batch_size=2,gradient_checkpointing=false"
    summary = run_benchmark(python, project, "--tiny", "--compare", "seed", "--compare", b2)

    assert [run["label"] for run in summary["runs"]] == ["seed", "b2", "config"]
    seed, two, config = summary["runs"]
    for run in (seed, two, config):
        settings = run["settings"]
        assert settings["peft"] == {
            "r": 16,
            "lora_alpha": 32.0,
            "lora_dropout": 0.05,
            "target_modules": sorted(spec["target_modules"]),
        }
        assert settings["pass"]["r"] == 16 and settings["pass"]["torch_dtype"] == spec["torch_dtype"]
        assert settings["trainer"]["gradient_accumulation_steps"] == 2
        assert settings["trainer"]["learning_rate"] == spec["training_args"]["learning_rate"]
        assert settings["trainer"]["max_grad_norm"] == spec["training_args"]["max_grad_norm"]
        assert settings["data"]["max_seq_len"] == 128  # --tiny
        assert settings["parameters"]["quantized_4bit"] is False
        assert run["results"]["trainable_parameters"] == 16 * TINY_LORA_PER_RANK
        assert run["results"]["tokens_per_step"] == settings["trainer"]["per_device_train_batch_size"] * 2 * 128
        assert_sane(run)
    assert config["settings"]["trainer"]["gradient_checkpointing"] is spec["training_args"]["gradient_checkpointing"]
    assert (
        config["settings"]["trainer"]["per_device_train_batch_size"]
        == spec["training_args"]["per_device_train_batch_size"]
    )
    assert config["results"]["hardware_flops_per_token"] == 6 * config["results"]["base_parameters"]
    assert seed["settings"]["trainer"]["gradient_checkpointing"] is False
    assert seed["settings"]["trainer"]["per_device_train_batch_size"] == 1
    assert seed["results"]["hardware_flops_per_token"] == 4 * seed["results"]["base_parameters"]
    assert two["overrides"] == [
        "data.max_seq_len=128",
        "training_args.per_device_train_batch_size=2",
        "training_args.gradient_checkpointing=false",
    ]
    assert two["settings"]["trainer"]["per_device_train_batch_size"] == 2
    assert two["settings"]["trainer"]["gradient_checkpointing"] is False
    assert two["settings"]["trainer"]["torch_compile"] is False  # recorded for every run, as bf16 is
    assert summary["device"]["kind"] == "cpu" and summary["versions"]["olive-ai"]
    header = next(line for line in summary["stdout"].splitlines() if line.strip().startswith("seed"))
    assert header.split() == ["seed", "b2", "config"]
    assert "tokens/s" in summary["stdout"] and "peak memory GiB" in summary["stdout"]


@pytest.mark.pipeline
def test_qlora_adapts_every_4bit_linear_with_olives_defaults(projects, python):
    project = projects["qlora"]
    # bitsandbytes' 4-bit CPU path is slow: one micro-batch of 2 per step keeps this short
    spec = edit_config(project, r=8, gradient_accumulation_steps=1)
    summary = run_benchmark(python, project, "--tiny", "--set", "per_device_train_batch_size=2")

    (run,) = summary["runs"]
    settings = run["settings"]
    assert settings["pass"]["type"] == "QLoRA" and settings["parameters"]["quantized_4bit"] is True
    assert settings["peft"]["r"] == 8 and settings["peft"]["target_modules"] == QLORA_MODULES
    # the config sets no optimizer: Olive's QLoRA default reaches the Trainer
    assert "optim" not in spec["training_args"] and settings["trainer"]["optim"] == "paged_adamw_32bit"
    assert settings["trainer"]["per_device_train_batch_size"] == 2  # --set
    assert run["overrides"] == ["data.max_seq_len=128", "training_args.per_device_train_batch_size=2"]
    assert settings["trainer"]["gradient_accumulation_steps"] == 1
    assert run["results"]["tokens_per_step"] == 2 * 1 * 128
    assert_sane(run)


@pytest.mark.pipeline
def test_a_failed_column_is_recorded_and_the_others_run(projects, python):
    """A column that breaks in training (batch 0 here; out of memory on a GPU) fails alone: the others run, the
    JSON holds every column, and the exit code says one failed. '--compare config' puts the config first."""
    project = projects["lora"]
    columns = ["config", "bad:per_device_train_batch_size=0", "b2:per_device_train_batch_size=2"]
    compare = [arg for column in columns for arg in ("--compare", column)]
    result = benchmark(python, project, "--tiny", *compare, "--json", "partial.json")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR: --compare: bad failed")
    summary = json.loads((project / "partial.json").read_text(encoding="utf-8"))
    assert [run["label"] for run in summary["runs"]] == ["config", "bad", "b2"]
    config, bad, two = summary["runs"]
    assert bad["failed"].startswith("exit code ") and "results" not in bad
    for run in (config, two):
        assert "failed" not in run and run["results"]["tokens_per_s"] > 0
    assert "[benchmark] bad failed" in result.stdout


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("b4", "expected seed, config or LABEL:KEY=VALUE"),
        ("b 4:per_device_train_batch_size=4", "start with a label"),
        ("b4:per_device_train_batch_size", "'per_device_train_batch_size' is not KEY=VALUE"),
        ("config:max_seq_len=64", "'config' names fixed settings; give the overrides another label"),
        ("b4:", "expected seed, config or LABEL:KEY=VALUE"),
    ],
)
def test_a_malformed_compare_is_one_error_before_any_work(projects, python, item, message):
    result = benchmark(python, projects["lora"], "--tiny", "--compare", item)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and message in lines[0], lines
    assert "[benchmark]" not in result.stdout


def test_a_config_without_training_is_refused(projects, python):
    """A convert-only project has no benchmark_train.py; a config without a LoRA/QLoRA pass given to it says so."""
    assert not (projects["none"] / "setup/benchmark_train.py").exists()
    convert_only = projects["none"] / "fine-tuning/olive-config.json"
    result = benchmark(python, projects["lora"], "--tiny", "--config", str(convert_only))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("ERROR: ") and len(result.stderr.strip().splitlines()) == 1
    assert "no LoRA/QLoRA pass" in result.stderr


def test_full_size_on_a_cpu_needs_force(projects, python, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a GPU on the test machine must not start a 3.8 B run
    result = benchmark(python, projects["lora"])
    assert result.returncode == 1
    assert "no CUDA GPU here" in result.stderr and "--tiny" in result.stderr and "--force" in result.stderr
    assert not (projects["lora"] / "gen-model/benchmark").exists()



# Each model's parameter count as its Hub page gives it (safetensors metadata): the full-size random model must
# have the real model's dimensions (cookiecutter.json _models ... architecture.full_size), not a near miss.
PUBLISHED_PARAMETERS = {
    "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552,
    "microsoft/Phi-3-mini-128k-instruct": 3_821_079_552,
    "microsoft/Phi-3.5-mini-instruct": 3_821_079_552,
    "microsoft/Phi-4-mini-instruct": 3_836_021_760,
}
COUNT_FULL_SIZE = """
import json, sys
from pathlib import Path
sys.path.insert(0, "setup")
import project, tiny_model, torch
from transformers import Phi3ForCausalLM
facts = project.load()
tokenizer = tiny_model.build_tokenizer(facts, Path("datasets/train.jsonl"), Path(sys.argv[1]))
config = tiny_model.model_config(facts, tokenizer, facts["architecture"]["full_size"])
with torch.device("meta"):
    print(sum(p.numel() for p in Phi3ForCausalLM(config).parameters()))
"""


@pytest.mark.parametrize("model", sorted(PUBLISHED_PARAMETERS))
def test_full_size_model_has_the_published_parameter_count(tmp_path, python, model):
    project = bake(tmp_path, base_model=model, check_environment=False)
    result = run_cli([python, "-c", COUNT_FULL_SIZE, str(tmp_path / "tokenizer")], project)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) == PUBLISHED_PARAMETERS[model]
