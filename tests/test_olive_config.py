"""Every generated Olive config is read by olive-ai key by key: no ignored key, no pruned pass."""

import importlib.util
import json

import pydantic
import pytest
from conftest import CONTEXT, TEMPLATE, bake
from test_template import CASES

PROFILES = CONTEXT["_training_profiles"]
PROFILE_CASES = [(method, name) for method in ("lora", "qlora") for name in PROFILES[method]]
PROFILE_KEYS = ("per_device_train_batch_size", "gradient_checkpointing", "bf16", "use_liger_kernel")
GPU_RECORDS = TEMPLATE / "docs/gpu/2026-11-28-h200"  # setup/benchmark_train.py --json of each device call


@pytest.mark.parametrize(("method", "gpu_memory"), PROFILE_CASES, ids=["-".join(c) for c in PROFILE_CASES])
def test_each_profile_is_the_measured_run_it_names(method, gpu_memory):
    """The profile's settings and figures are those of one recorded GPU run, not typed in."""
    profile = PROFILES[method][gpu_memory]
    path, label = profile["measured_in"].split("#")
    summary = json.loads((GPU_RECORDS / path).read_text(encoding="utf-8"))
    (run,) = [run for run in summary["runs"] if run["label"] == label]
    assert summary["finetune_method"] == method and summary["size"] == "full"
    assert "H200" in run["device"]["name"] and run["settings"]["data"]["max_seq_len"] == 2048
    trainer = run["settings"]["trainer"]
    for key in ("per_device_train_batch_size", "gradient_checkpointing", "bf16"):
        assert trainer[key] == profile[key], key
    assert ("training_args.use_liger_kernel=true" in run["overrides"]) is profile["use_liger_kernel"]
    assert round(run["results"]["tokens_per_s"]) == profile["tokens_per_s"]
    assert round(run["results"]["peak_memory"]["reserved_gib"], 2) == profile["peak_gib"]


def load_checker(project):
    spec = importlib.util.spec_from_file_location("check_config", project / "fine-tuning/check_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    return load_checker(bake(tmp_path_factory.mktemp("checker")))


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c).replace("microsoft/", ""))
def test_every_generated_config_passes_the_deep_check(tmp_path, checker, case):
    method, target, provider, precision, model, gpu = case
    project = bake(
        tmp_path, finetune_method=method, compute_target=target, execution_provider=provider,
        onnx_precision=precision, base_model=model, gpu_memory=gpu,
    )
    assert checker.check(project / "fine-tuning/olive-config.json") == []


@pytest.mark.parametrize(("method", "gpu_memory"), PROFILE_CASES, ids=["-".join(c) for c in PROFILE_CASES])
def test_each_gpu_profile_renders_its_measured_settings(tmp_path, checker, method, gpu_memory):
    profile = PROFILES[method][gpu_memory]
    project = bake(tmp_path, finetune_method=method, gpu_memory=gpu_memory)
    config = json.loads((project / "fine-tuning/olive-config.json").read_text(encoding="utf-8"))
    args = config["passes"][method]["training_args"]
    found = {key: args.get(key, False) for key in PROFILE_KEYS}
    assert found == {key: profile[key] for key in PROFILE_KEYS}
    batch = profile["per_device_train_batch_size"]
    assert args["per_device_eval_batch_size"] == batch
    assert batch * args["gradient_accumulation_steps"] == PROFILES["samples_per_step"]
    # bf16 and Liger are GPU settings: the deep check reads every key on this CPU machine all the same
    assert checker.check(project / "fine-tuning/olive-config.json") == []
    requirements = (project / "setup/requirements.txt").read_text(encoding="utf-8")
    liger = f'liger-kernel=={CONTEXT["_pins"]["liger-kernel"]}; sys_platform == "linux"'
    assert (liger in requirements) is profile["use_liger_kernel"]
    facts = json.loads((project / "setup/project.json").read_text(encoding="utf-8"))
    assert facts["gpu_memory"] == gpu_memory and facts["training_profiles"] == PROFILES
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert f"| {gpu_memory} (this project) | {batch} |" in readme
    assert readme.count(" (this project) |") == 1 and f"{profile['tokens_per_s']:,}" in readme


def test_a_typed_batch_size_keeps_four_samples_per_step(tmp_path):
    project = bake(tmp_path, gpu_memory="40gb", per_device_train_batch_size="2")
    args = json.loads((project / "fine-tuning/olive-config.json").read_text(encoding="utf-8"))["passes"]["lora"]
    assert args["training_args"]["per_device_train_batch_size"] == 2
    assert args["training_args"]["gradient_accumulation_steps"] == 2


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["passes"]["lora"].update(lora_r=8), "lora_r"),
        (lambda c: c["passes"]["lora"].update(lora_alpha=8), "lora_alpha"),
        (lambda c: c["passes"]["lora"]["training_args"].update(evaluation_strategy="steps"), "evaluation_strategy"),
        (lambda c: c["passes"]["lora"]["training_args"].update(group_by_length=True, gruop_by_length=1), "gruop"),
        (lambda c: c["passes"]["lora"].update(eval_dataset_size=0.3), "eval_dataset_size"),
        (lambda c: c["data_configs"][0]["pre_process_data_config"].update(corpus_strategy="join"), "corpus_strategy"),
        (lambda c: c["data_configs"][1]["pre_process_data_config"].update(source_max_len=1024), "source_max_len"),
        (lambda c: c["data_configs"][0]["pre_process_data_config"].update(dataset_type="corpus"), "dataset_type"),
        (
            lambda c: (
                c["systems"]["local_system"]["accelerators"][0].update(
                    device="cpu", execution_providers=["CPUExecutionProvider"]
                ),
                c["passes"]["builder"].update(precision="fp16"),
            ),
            "prunes",
        ),
        # Olive keeps training_args as a plain dict when one of its own fields has the wrong JSON type
        (
            lambda c: c["passes"]["lora"]["training_args"].update(learning_rate="1e-4", bf16="false"),
            'learning_rate: "1e-4": Input should be a valid number; remove the quotes',
        ),
        # neither Olive nor transformers converts TrainingArguments fields: "false" would switch bf16 on
        (lambda c: c["passes"]["lora"]["training_args"].update(bf16="false"), 'bf16: "false" is not true or false'),
        (
            lambda c: c["passes"]["lora"]["training_args"].update(per_device_train_batch_size="4"),
            'per_device_train_batch_size: "4" is not a whole number; remove the quotes',
        ),
        (lambda c: c["passes"]["lora"]["training_args"].update(max_steps=10.0), "max_steps: 10.0 is not a whole"),
    ],
    ids=["lora_r", "lora_alpha", "evaluation_strategy", "typo", "eval_dataset_size", "corpus_strategy",
         "source_max_len", "dataset_type", "fp16-on-cpu", "quoted-olive-field", "quoted-switch", "quoted-batch",
         "float-steps"],
)
def test_deep_check_fails_on_what_olive_would_ignore(tmp_path, checker, mutate, expected):
    project = bake(tmp_path)
    path = project / "fine-tuning/olive-config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    mutate(config)
    path.write_text(json.dumps(config), encoding="utf-8")
    problems = checker.check(path)
    assert problems and any(expected in problem for problem in problems), problems


def test_deep_check_flags_target_modules_that_qlora_overrides(tmp_path, checker):
    project = bake(tmp_path, finetune_method="qlora")
    path = project / "fine-tuning/olive-config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["passes"]["qlora"]["target_modules"] = ["qkv_proj"]
    path.write_text(json.dumps(config), encoding="utf-8")
    assert any("target_modules" in problem for problem in checker.check(path))


def test_deep_check_cli_reports_in_one_line(tmp_path, python):
    from conftest import run_cli

    project = bake(tmp_path)
    ok = run_cli([python, "fine-tuning/check_config.py"], project)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK:")
    path = project / "fine-tuning/olive-config.json"
    path.write_text(path.read_text(encoding="utf-8").replace('"r":', '"lora_r":'), encoding="utf-8")
    bad = run_cli([python, "fine-tuning/check_config.py"], project)
    assert bad.returncode == 1
    errors = [line for line in bad.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "lora_r" in errors[0]
    assert "Traceback" not in bad.stderr


def test_cookbook_config_is_refused(tmp_path, checker):
    """The CookBook page's AzureML-era config is what this template replaces; Olive 0.13 cannot read it."""
    path = tmp_path / "cookbook.json"
    path.write_text(json.dumps({
        "azureml_client": {"subscription_id": "x", "resource_group": "y", "workspace_name": "z"},
        "input_model": {
            "type": "PyTorchModel",
            "config": {"hf_config": {"model_name": "microsoft/Phi-3-mini-4k-instruct"}},
        },
        "systems": {"aml": {"type": "AzureML", "config": {"accelerators": ["gpu"]}}},
        "passes": {"lora": {"type": "LoRA", "config": {"lora_r": 64}}},
    }), encoding="utf-8")
    with pytest.raises(pydantic.ValidationError) as refused:
        checker.check(path)
    # the two keys of the AzureML system Olive 0.9.3 removed, each named
    assert "'AzureML'" in str(refused.value) and "azureml_client" in str(refused.value)
