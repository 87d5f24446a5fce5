"""Every generated Olive config is read by olive-ai key by key: no ignored key, no pruned pass."""

import importlib.util
import json

import pytest
from conftest import bake
from test_template import CASES


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
    method, target, provider, precision, model = case
    project = bake(
        tmp_path, finetune_method=method, compute_target=target, execution_provider=provider,
        onnx_precision=precision, base_model=model,
    )
    assert checker.check(project / "fine-tuning/olive-config.json") == []


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
    ],
    ids=["lora_r", "lora_alpha", "evaluation_strategy", "typo", "eval_dataset_size", "corpus_strategy",
         "source_max_len", "dataset_type", "fp16-on-cpu"],
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
    with pytest.raises(Exception):  # noqa: B017 - any parse failure is the expected outcome
        checker.check(path)
