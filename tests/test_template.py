"""Bake every valid combination of the choice prompts and check what lands on disk."""

import csv
import io
import itertools
import json
import subprocess

import pytest
import tomllib
import yaml
from conftest import CONTEXT, DEFAULT_SLUG, RUFF, TEMPLATE, bake

METHODS, TARGETS = CONTEXT["finetune_method"], CONTEXT["compute_target"]
PROVIDERS, PRECISIONS = CONTEXT["execution_provider"], CONTEXT["onnx_precision"]
MODELS = CONTEXT["base_model"]
LEFTOVERS = ("{{", "}}", "{%", "%}")


def valid(method, provider, precision) -> bool:
    return not (method == "none" and precision == "none") and not (precision == "fp16" and provider == "cpu")


COMBOS = [
    combo for combo in itertools.product(METHODS, TARGETS, PROVIDERS, PRECISIONS) if valid(combo[0], *combo[2:])
]
GPUS = CONTEXT["gpu_memory"]


def gpu_choices(method: str) -> list[str]:
    """The gpu_memory answers a method takes (a method without training takes any)."""
    profiles = CONTEXT["_training_profiles"].get(method)
    return [gpu for gpu in GPUS if profiles is None or gpu in profiles]


# base_model and gpu_memory do not change which passes exist, so they are cycled over the combinations
CASES = [
    (*combo, MODELS[i % len(MODELS)], gpu_choices(combo[0])[i % len(gpu_choices(combo[0]))])
    for i, combo in enumerate(COMBOS)
]

COMMON_FILES = {
    ".cookiecutter.json",
    ".gitignore",
    "README.md",
    "datasets/README.md",
    "datasets/eval.jsonl",
    "datasets/prepare.py",
    "datasets/sample.csv",
    "datasets/sources.py",
    "datasets/train.jsonl",
    "fine-tuning/README.md",
    "fine-tuning/check_config.py",
    "fine-tuning/olive-config.json",
    "fine-tuning/run.py",
    "gen-model/README.md",
    "inferences/README.md",
    "inferences/benchmark.py",
    "inferences/chat.py",
    "ruff.toml",
    "model-cache/README.md",
    "model-cache/download.py",
    "setup/README.md",
    "setup/benchmark_train.py",
    "setup/check_env.py",
    "setup/env_checks.py",
    "setup/env_facts.py",
    "setup/env_probes.py",
    "setup/onnx_cuda_env.py",
    "setup/project.json",
    "setup/project.py",
    "setup/requirements.txt",
    "setup/smoke.py",
    "setup/tiny_model.py",
}
AZURE_FILES = {
    "fine-tuning/azureml/README.md",
    "fine-tuning/azureml/config.example.json",
    "fine-tuning/azureml/job_steps.py",
    "fine-tuning/azureml/requirements.txt",
    "fine-tuning/azureml/submit.py",
}


# ONNX on CUDA runs in an environment of its own (setup/onnx_cuda_env.py)
ONNX_CUDA_REQUIREMENTS = "setup/requirements-onnx-cuda.txt"


def files_of(root):
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_combinations_cover_every_choice():
    assert len(CASES) == 38
    for index, values in enumerate((METHODS, TARGETS, PROVIDERS, PRECISIONS, MODELS, GPUS)):
        assert {case[index] for case in CASES} == set(values)


def test_model_table_matches_choices_and_prompts():
    assert list(CONTEXT["_models"]) == MODELS
    for model in CONTEXT["_models"].values():
        assert model["chat_format"] in CONTEXT["_chat_formats"]
        assert model["lora_target_modules"]
    prompted = {k for k in CONTEXT if not k.startswith("_")}
    assert prompted == set(CONTEXT["__prompts__"]), "every prompt has help text"


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    root = tmp_path_factory.mktemp("bakes")
    projects = {}
    for i, (method, target, provider, precision, model, gpu) in enumerate(CASES):
        projects[(method, target, provider, precision, model, gpu)] = bake(
            root / str(i),
            finetune_method=method,
            compute_target=target,
            execution_provider=provider,
            onnx_precision=precision,
            base_model=model,
            gpu_memory=gpu,
        )
    return projects


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c).replace("microsoft/", ""))
def test_bake_writes_exact_tree_with_valid_files(baked, case):
    method, target, provider, precision, model, _gpu = case
    project = baked[case]
    assert project.name == DEFAULT_SLUG
    expected = COMMON_FILES | (AZURE_FILES if target == "azureml" else set())
    if provider == "cuda" and precision != "none":
        expected.add(ONNX_CUDA_REQUIREMENTS)
    if method == "none":
        expected.remove("setup/benchmark_train.py")  # nothing trains
    assert files_of(project) == expected

    for path in project.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        for token in LEFTOVERS:
            assert token not in text, f"{path.relative_to(project)} keeps {token!r}"
        if path.suffix == ".json":
            json.loads(text)
        elif path.suffix == ".jsonl":
            [json.loads(line) for line in text.splitlines()]
        elif path.suffix in (".yml", ".yaml"):
            yaml.safe_load(text)
        elif path.suffix == ".csv":
            rows = list(csv.reader(io.StringIO(text, newline="")))
            assert {len(row) for row in rows} == {2}, f"{path.relative_to(project)}: every row has 2 fields"
        elif path.suffix == ".toml":
            tomllib.loads(text)
        elif path.suffix == ".py":
            compile(text, str(path), "exec")

    config = json.loads((project / "fine-tuning/olive-config.json").read_text(encoding="utf-8"))
    passes = [spec["type"] for spec in config["passes"].values()]
    trains = {"lora": ["LoRA", "MergeAdapterWeights"], "qlora": ["QLoRA", "MergeAdapterWeights"], "none": []}
    # int4: Olive's Rtn pass quantizes the PyTorch model, so ModelBuilder never holds an fp32 graph (32 GB hosts)
    onnx = {"none": [], "int4": ["Rtn", "ModelBuilder"]}.get(precision, ["ModelBuilder"])
    assert passes == trains[method] + onnx
    assert config["input_model"] == {
        "type": "HfModel",
        "model_path": f"model-cache/{model}",
        "load_kwargs": {"trust_remote_code": False},
    }
    accelerator = config["systems"]["local_system"]["accelerators"][0]
    assert accelerator["execution_providers"] == [
        "CUDAExecutionProvider" if provider == "cuda" else "CPUExecutionProvider"
    ]
    assert "<|user|>" in (project / "fine-tuning/olive-config.json").read_text(encoding="utf-8") or method == "none"

    requirements = (project / "setup/requirements.txt").read_text(encoding="utf-8")
    pins = CONTEXT["_pins"]
    genai = "onnxruntime-genai-cuda" if provider == "cuda" else "onnxruntime-genai"
    assert f"{genai}=={pins[genai]}" in requirements.splitlines()
    assert ("bitsandbytes==" in requirements) == (method == "qlora")
    for line in requirements.splitlines():
        if line and not line.startswith("#"):
            requirement, _, marker = line.partition(";")
            name, version = requirement.strip().split("==")
            assert pins[name] == version
            assert marker.strip() in ("", 'sys_platform == "linux"'), line
    onnx_cuda = project / ONNX_CUDA_REQUIREMENTS
    if onnx_cuda.is_file():
        lines = [line for line in onnx_cuda.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
        assert lines == [
            f"onnxruntime-gpu[cuda,cudnn]=={pins['onnxruntime-gpu']}",
            f"onnxruntime-genai-cuda=={CONTEXT['_onnx_cuda_pins']['onnxruntime-genai-cuda']}",
            f"numpy=={pins['numpy']}",
        ]


def test_generated_python_passes_its_own_ruff_config(baked):
    """`ruff check .` and `ruff format --check .` pass in every generated project, as a user's CI would run them."""
    for case in CASES:
        for command in (["check"], ["format", "--check"]):
            result = subprocess.run(
                [RUFF, *command, "--no-cache", "."], cwd=baked[case], capture_output=True, text=True, check=False
            )
            assert result.returncode == 0, f"{case}: ruff {' '.join(command)}\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    "name", ["check_env.py", "env_facts.py", "env_checks.py", "env_probes.py", "benchmark_train.py", "onnx_cuda_env.py"]
)
def test_no_jinja_in_the_template_files(name):
    """These scripts are copied as they are: a Jinja sequence in them would be rendered, or break the bake."""
    text = (TEMPLATE / "{{cookiecutter.project_slug}}" / "setup" / name).read_text("utf-8")
    assert not any(sequence in text for sequence in ("{{", "}}", "{%", "%}", "{#"))


def test_what_a_run_writes_is_git_ignored(tmp_path):
    """git add in a project after a run takes the project's files, not the weights, outputs, caches or venvs."""
    project = bake(tmp_path, check_environment=False)
    written = [
        "gen-model/outputs.json",
        "gen-model/olive-run.log",
        "gen-model/training-loss.png",
        "gen-model/olive-config.run1.json",
        "gen-model/adapter/adapter_config.json",
        "gen-model/onnx/genai_config.json",
        "model-cache/microsoft/Phi-3-mini-4k-instruct/config.json",
        ".olive-cache/training-data.json",
        ".venv-onnx-cuda/bin/python",
        "fine-tuning/azureml/config.json",
    ]
    for name in written:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("{}", encoding="utf-8")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    added = subprocess.run(
        ["git", "add", "--all", "--dry-run"], cwd=project, capture_output=True, text=True, check=True
    ).stdout
    staged = {line.removeprefix("add ").strip("'") for line in added.splitlines()}
    assert not staged & set(written), sorted(staged & set(written))
    assert {"gen-model/README.md", "model-cache/README.md", "model-cache/download.py"} <= staged


@pytest.mark.parametrize(
    ("answers", "override"),
    [
        ({}, None),  # the 16gb LoRA profile: batch 1 x 4
        ({"finetune_method": "qlora", "gpu_memory": "8gb"}, None),  # batch 2 x 2
        ({"per_device_train_batch_size": "3"}, "batch 3 × `gradient_accumulation_steps`\n1 = 3 samples"),
        ({"gradient_accumulation_steps": "8"}, "batch 1 × `gradient_accumulation_steps`\n8 = 8 samples"),
    ],
)
def test_readme_says_when_answers_override_the_profile(tmp_path, answers, override):
    """The profile table promises 4 samples per optimizer step; other batch answers must not be hidden behind it."""
    readme = (bake(tmp_path, check_environment=False, **answers) / "README.md").read_text(encoding="utf-8")
    assert "samples per optimizer\nstep in each" in readme
    if override is None:
        assert "override" not in readme
    else:
        assert override in readme
