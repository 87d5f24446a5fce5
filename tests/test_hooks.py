"""Answers are validated before anything is written; hostile answers stay data."""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONTEXT, DEFAULT_SLUG, TEMPLATE, bake, closed_endpoint, run_cli
from hub_server import HubServer

BAD_ANSWERS = [
    ({"project_slug": "Bad Slug"}, "project_slug"),
    ({"project_slug": "../escape"}, "project_slug"),
    ({"project_slug": "a" * 65}, "project_slug"),
    ({"project_name": "Contoso " * 9}, "project_slug"),  # the derived slug is 71 characters
    ({"project_name": "   "}, "project_name"),
    ({"lora_r": "0"}, "lora_r"),
    ({"lora_r": "sixty-four"}, "lora_r"),
    ({"lora_alpha": "0"}, "lora_alpha"),
    ({"lora_dropout": "1"}, "lora_dropout"),
    ({"lora_dropout": "-0.1"}, "lora_dropout"),
    ({"learning_rate": "0"}, "learning_rate"),
    ({"learning_rate": "nan"}, "learning_rate"),
    ({"max_steps": "0"}, "max_steps"),
    ({"per_device_train_batch_size": "0"}, "per_device_train_batch_size"),
    ({"gradient_accumulation_steps": "1.5"}, "gradient_accumulation_steps"),
    ({"seed": "-1"}, "seed"),
    ({"seed": str(2**32)}, "seed"),  # transformers' set_seed takes at most 2**32 - 1
    ({"data_seed": "x"}, "data_seed"),
    ({"data_seed": str(2**32)}, "data_seed"),
    ({"max_grad_norm": "0"}, "max_grad_norm"),
    ({"adam_beta2": "1"}, "adam_beta2"),
    ({"max_seq_len": "8192"}, "max_seq_len"),  # Phi-3-mini-4k's context is 4096
    ({"max_seq_len": "4"}, "max_seq_len"),
    ({"question_column": "q.text"}, "question_column"),
    ({"answer_column": "{answer}"}, "answer_column"),
    ({"question_column": "2024"}, "question_column"),  # str.format reads {2024} as a position
    ({"answer_column": "2024"}, "answer_column"),
    ({"answer_column": ""}, "answer_column"),
    ({"answer_column": "Question"}, "answer_column"),
    ({"answer_column": " padded "}, "answer_column"),
    ({"finetune_method": "none", "onnx_precision": "none"}, "onnx_precision"),
    ({"execution_provider": "cpu", "onnx_precision": "fp16"}, "onnx_precision"),
    ({"gpu_memory": "8gb"}, "gpu_memory"),  # LoRA's bf16 weights alone are 7.1 GiB
]


@pytest.mark.parametrize(("answers", "field"), BAD_ANSWERS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_ANSWERS)])
def test_bad_answer_is_refused_with_one_line_and_no_folder(tmp_path, answers, field):
    args = [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(tmp_path), str(TEMPLATE)]
    result = run_cli(args + [f"{k}={v}" for k, v in answers.items()], tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ") and "Stopping" not in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"ERROR: {field}: ")
    assert list(tmp_path.iterdir()) == []


def test_slug_with_slashes_names_the_folders_cookiecutter_made_first(tmp_path):
    args = [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(tmp_path), str(TEMPLATE),
            "project_slug=a/b/c"]
    result = run_cli(args, tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ") and "Stopping" not in line]
    assert len(errors) == 1 and errors[0].startswith("ERROR: project_slug: 'a/b/c' is not a folder name"), errors
    assert errors[0].endswith(f"(cookiecutter made or reused {tmp_path / 'a/b'}, {tmp_path / 'a'} for it: remove what "
                              "is empty there)")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/b"]


def test_too_long_slug_says_it_is_the_length(tmp_path):
    args = [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(tmp_path), str(TEMPLATE),
            f"project_name={'Contoso ' * 9}"]
    result = run_cli(args, tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ") and "Stopping" not in line]
    assert len(errors) == 1, result.stderr
    assert "is too long; use at most 64 characters (it has 71), e.g. contoso-contoso" in errors[0]
    assert "not a folder name" not in errors[0]
    fix = errors[0].rsplit("e.g. ", 1)[1]
    assert len(fix) <= 64 and not fix.endswith("-")
    # the bad characters are named, not the length, when both are wrong
    result = run_cli(args[:-1] + ["project_slug=" + "A" * 70], tmp_path)
    assert "is not a folder name" in result.stderr and "too long" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_prompts_say_the_slug_is_a_folder_of_at_most_64_characters():
    prompt = CONTEXT["__prompts__"]["project_slug"]
    assert "folder" in prompt and "64 characters" in prompt and "package" not in prompt


def test_long_context_model_accepts_long_sequences(tmp_path):
    project = bake(tmp_path, base_model="microsoft/Phi-3.5-mini-instruct", max_seq_len="8192")
    config = json.loads((project / "fine-tuning/olive-config.json").read_text(encoding="utf-8"))
    assert config["data_configs"][0]["pre_process_data_config"]["max_seq_len"] == 8192


HOSTILE_NAMES = [
    'Say "hi"',
    "It's mine",
    "back\\slash\\",
    "Café Ünïcode 東京 🚀",
    "{{ cookiecutter.project_slug }} and {% raw %}",
    '"""; import os; os.system("echo pwned") #',
]


def prompt_answers(name: str, slug: str) -> str:
    """Answer the real interactive prompts: the name, the slug, then the default for everything else."""
    prompts = [k for k in CONTEXT if not k.startswith("_")]
    lines = [name, slug] + [""] * (len(prompts) - 2)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_project_name_is_data(tmp_path, name):
    args = [sys.executable, "-m", "cookiecutter", "--output-dir", str(tmp_path), str(TEMPLATE)]
    result = run_cli(args, tmp_path, input_text=prompt_answers(name, "hostile"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "pwned" not in result.stdout.splitlines()  # the echo would print it on a line of its own
    project = tmp_path / "hostile"
    facts = json.loads((project / "setup/project.json").read_text(encoding="utf-8"))
    assert facts["project_name"] == name
    answers = json.loads((project / ".cookiecutter.json").read_text(encoding="utf-8"))["cookiecutter"]
    assert answers["project_name"] == name
    assert name.splitlines()[0] in (project / "README.md").read_text(encoding="utf-8")
    for path in project.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8").replace(name, "")
            for token in ("{{", "{%"):
                assert token not in text, path
            if path.suffix == ".py":
                compile(text, str(path), "exec")


def test_newline_in_name_still_gives_valid_files(tmp_path):
    project = bake(tmp_path, project_name="two\nlines")
    assert json.loads((project / "setup/project.json").read_text(encoding="utf-8"))["project_name"] == "two\nlines"


def test_default_slug_is_derived_from_the_name(tmp_path):
    project = bake(tmp_path, project_name="Fabrikam Legal Q&A")
    assert project.name == "fabrikam-legal-q-a"


def test_answers_file_replays_to_the_same_project(tmp_path):
    first = bake(tmp_path / "a", finetune_method="qlora", lora_r="16", question_column="prompt", answer_column="reply")
    replay = tmp_path / "replay.json"
    replay.write_text((first / ".cookiecutter.json").read_text(encoding="utf-8"), encoding="utf-8")
    args = [sys.executable, "-m", "cookiecutter", "--replay-file", str(replay), "--output-dir", str(tmp_path / "b"),
            str(TEMPLATE)]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    second = tmp_path / "b" / DEFAULT_SLUG
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_generation_prints_next_steps(tmp_path):
    args = [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(tmp_path), str(TEMPLATE)]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0
    assert "python setup/smoke.py" in result.stdout
    assert "python model-cache/download.py" in result.stdout


def test_pins_are_the_installed_test_environment():
    """The pinned set is what these tests ran on: the constraints file is made from the same table."""
    from importlib.metadata import version

    for name, pinned in CONTEXT["_pins"].items():
        if name in ("onnxruntime-gpu", "onnxruntime-genai-cuda"):
            continue  # CUDA builds: the CPU twins with the same version are checked instead
        if name == "liger-kernel":
            continue  # Triton kernels for the 40gb profile's GPU training: nothing here can run them
        installed = version(name)
        assert installed.split("+")[0] == pinned, name


# --- post-generation: it reports, it never fails generation ----------------------------------------------


def offline_env(tmp_path: Path, **extra: str) -> dict:
    """No real hub: a closed port on 127.0.0.1, an empty HF_HOME, no token, no virtualenv to pick up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VIRTUAL_ENV"))}
    env.update(HF_ENDPOINT=closed_endpoint(), HF_HOME=str(tmp_path / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def bare_cookiecutter(tmp_path_factory):
    """cookiecutter in a venv with nothing else: no torch, no onnxruntime, no huggingface_hub."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text("\n".join(f"{k}=={v}" for k, v in CONTEXT["_pins"].items()) + "\n", encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install", "-q", "-c",
         str(constraints), "cookiecutter==2.7.1"],
        check=True, capture_output=True,
    )
    probe = subprocess.run([str(venv / "bin/python"), "-c", "import torch"], capture_output=True, check=False)
    assert probe.returncode != 0, "the bare venv must not see torch"
    return venv / "bin"


def test_bare_machine_gets_a_report_and_the_download_command_for_later(tmp_path, bare_cookiecutter):
    """No GPU, no nvidia-smi, no torch, no huggingface_hub: generation succeeds and says what to do."""
    env = offline_env(tmp_path, PATH=f"{bare_cookiecutter}:/usr/bin:/bin")
    args = [str(bare_cookiecutter / "cookiecutter"), "--no-input", "--output-dir", str(tmp_path / "out"),
            str(TEMPLATE), "download_model=yes"]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    project = tmp_path / "out" / DEFAULT_SLUG
    assert (project / "datasets/train.jsonl").is_file() and (project / "setup/check_env.py").is_file()
    report = out.split("== Environment check")[1].split("== ")[0]
    assert "nvidia-smi" in report and "torch" in report and "✗" in report
    assert "No Python here has the project's packages yet (expected before setup)" in out
    assert f"no Python here has huggingface_hub {CONTEXT['_pins']['huggingface_hub']} yet" in out
    assert "  python model-cache/download.py" in out.split("Next steps")[1]


def test_download_with_the_hub_unreachable_keeps_the_project_and_says_how_to_fetch_later(tmp_path):
    env = offline_env(tmp_path)
    args = [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(tmp_path / "out"), str(TEMPLATE),
            "download_model=yes", "check_environment=no"]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== Base model download" in result.stdout
    # the step's own lines come through the hook's output, stderr with stdout so that their order stays
    assert "ERROR: " in result.stdout.split("== Base model download")[1]
    assert "Traceback" not in result.stdout + result.stderr
    assert "the download did not finish (the line above says why); fix that, then run" in result.stdout
    assert "== Environment check" not in result.stdout
    project = tmp_path / "out" / DEFAULT_SLUG
    assert (project / "fine-tuning/olive-config.json").is_file()
    assert not any((project / "model-cache").rglob("*.safetensors"))


def test_download_through_the_hook_against_a_local_hub(tmp_path):
    """download_model=yes fetches the pinned files from a real HTTP hub on 127.0.0.1 during generation."""
    model = CONTEXT["base_model"][0]
    revision = CONTEXT["_models"][model]["revision"]
    files = {"config.json": b'{"model_type": "phi3"}', "tokenizer_config.json": b"{}", "tokenizer.json": b"{}",
             "model.safetensors": b"\0" * 4096, "pytorch_model.bin": b"\1" * 64}
    with HubServer() as hub:
        hub.add_repo(model, revision, files)
        env = offline_env(tmp_path, HF_ENDPOINT=hub.endpoint)
        args = [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(tmp_path / "out"),
                str(TEMPLATE), "download_model=yes", "check_environment=no"]
        result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                                check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    target = tmp_path / "out" / DEFAULT_SLUG / "model-cache" / model
    assert sorted(p.name for p in target.iterdir() if p.is_file()) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert "  python model-cache/download.py" not in result.stdout.split("Next steps")[1]


@pytest.mark.parametrize("reader", ["head -3", "true"])
def test_output_piped_into_a_reader_that_leaves_keeps_the_whole_project(tmp_path, reader):
    """A closed stdout (`cookiecutter ... | head -3`; `true` closes it before the first line) must fail neither
    the hook (cookiecutter would delete all) nor a step the hook runs (the sample data would be missing)."""
    command = (f"{sys.executable} -m cookiecutter --no-input --output-dir {tmp_path / 'out'} {TEMPLATE} | {reader}; "
               "exit ${PIPESTATUS[0]}")
    result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    datasets = tmp_path / "out" / DEFAULT_SLUG / "datasets"
    assert all((datasets / name).stat().st_size > 0 for name in ("train.jsonl", "eval.jsonl"))


def hook_functions() -> dict:
    """The post-generation hook's functions, its one Jinja expression (the answers) filled with an empty object."""
    source = (TEMPLATE / "hooks/post_gen_project.py").read_text(encoding="utf-8")
    namespace = {"__name__": "post_gen_project"}
    exec(compile(source.replace('r"""{{ cookiecutter | jsonify }}"""', '"{}"'), "post_gen_project", "exec"), namespace)
    return namespace


def test_a_hook_step_keeps_its_output_in_order_and_its_time_limit(tmp_path, capfd):
    run_step = hook_functions()["run_step"]
    interleaved = "import sys\nfor i in range(50):\n    print('out', i)\n    print('err', i, file=sys.stderr)\n"
    assert run_step("order", sys.executable, ["-c", interleaved], tmp_path, 60) is True
    shown = capfd.readouterr().out.splitlines()
    expected = [f"{stream} {i}" for i in range(50) for stream in ("out", "err")]
    assert [line for line in shown if line.split(" ")[0] in ("out", "err")] == expected
    # a step past its time limit is stopped and reported; one that leaves a process behind does not hold the hook
    started = time.monotonic()
    assert run_step("slow", sys.executable, ["-c", "import time; time.sleep(60)"], tmp_path, 2) is False
    assert "WARNING: slow did not run" in capfd.readouterr().out
    leaves = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    assert run_step("leaves", sys.executable, ["-c", leaves], tmp_path, 60) is True
    assert time.monotonic() - started < 20


# a CUDA project with an ONNX model makes .venv-onnx-cuda right after the main environment (setup/onnx_cuda_env.py)
ONNX_CUDA_STEP = (
    "  python -m pip install -r setup/requirements.txt\n  python -m venv .venv-onnx-cuda && "
    ".venv-onnx-cuda/bin/python -m pip install -r setup/requirements-onnx-cuda.txt   # ONNX on CUDA"
)


AZURE_SETUP = [  # fine-tuning/azureml/README.md: what the dry run and the submit need, in its order
    "python -m pip install -r fine-tuning/azureml/requirements.txt",
    "az login",
    "cp fine-tuning/azureml/config.example.json fine-tuning/azureml/config.json",
    "python fine-tuning/azureml/submit.py --dry-run",
]


def in_order(steps: str, texts: list[str]) -> bool:
    positions = [steps.find(text) for text in texts]
    return -1 not in positions and positions == sorted(positions)


@pytest.mark.parametrize(
    ("answers", "present", "absent"),
    [
        ({"compute_target": "azureml"}, AZURE_SETUP, ["python fine-tuning/run.py", "python model-cache/download.py"]),
        ({"finetune_method": "none"}, ["python fine-tuning/run.py"], ["python datasets/prepare.py <your data>"]),
        ({}, ["python fine-tuning/run.py", "python datasets/prepare.py <your data> --force", ONNX_CUDA_STEP,
              "python model-cache/download.py"], ["azureml"]),
        ({"execution_provider": "cpu"}, ["python inferences/chat.py --backend onnx"], [".venv-onnx-cuda"]),
        ({"onnx_precision": "none"}, ["(lora, no ONNX model)", "chat.py --backend merged"], [".venv-onnx-cuda"]),
    ],
    ids=["azureml", "convert-only", "default", "onnx-on-cpu", "no-onnx"],
)
def test_next_steps_fit_the_variant(tmp_path, answers, present, absent):
    out = tmp_path / "my projects"  # a folder with a space: the cd line is quoted
    args = [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(out), str(TEMPLATE),
            "check_environment=no", *[f"{k}={v}" for k, v in answers.items()]]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    steps = result.stdout.split("Next steps")[1]
    assert f"  cd {shlex.quote(str(out / DEFAULT_SLUG))}\n" in steps and "'" in steps.splitlines()[1]
    # the project README's step 1: a virtual environment first, then the pinned set into it
    venv = "  python -m venv .venv && . .venv/bin/activate"
    assert "\n" + venv.strip() + "\n" in (out / DEFAULT_SLUG / "README.md").read_text(encoding="utf-8")
    assert in_order(steps, [venv, "python -m pip install -r setup/requirements.txt", "python setup/check_env.py"])
    assert "python datasets/prepare.py                # the sample set was not prepared" not in steps
    for text in present:
        assert text in result.stdout
    if answers.get("compute_target") == "azureml":
        assert in_order(steps, AZURE_SETUP)
    for text in absent:
        assert text not in steps


CONTEXTS = {
    "local": {"base_model": "microsoft/Phi-3-mini-4k-instruct", "finetune_method": "lora", "compute_target": "local",
              "onnx_precision": "int4", "execution_provider": "cpu"},
}
CONTEXTS["azureml"] = dict(CONTEXTS["local"], compute_target="azureml")


def test_next_steps_rerun_the_sample_data_before_replacing_it(tmp_path):
    next_steps = hook_functions()["next_steps"]
    steps = next_steps(tmp_path, CONTEXTS["local"], None, False)
    assert in_order(steps, ["python datasets/prepare.py                # the sample set was not prepared",
                            "python datasets/prepare.py <your data> --force", "python model-cache/download.py"])
    steps = next_steps(tmp_path, dict(CONTEXTS["local"], finetune_method="none"), None, False)
    assert "the sample set was not prepared" in steps and "<your data>" not in steps


def test_next_steps_on_azure_do_not_require_the_local_download(tmp_path):
    next_steps = hook_functions()["next_steps"]
    steps = next_steps(tmp_path, CONTEXTS["azureml"], None, True)
    assert "model-cache/download.py" not in steps
    assert "the job downloads the base model" in steps
    assert in_order(steps, ["<your data> --force", "python fine-tuning/check_config.py", *AZURE_SETUP,
                            "python fine-tuning/azureml/submit.py      #", "submit.py --download <job>"])
    # asked for the download and it could not run: the command is offered, as optional here
    steps = next_steps(tmp_path, CONTEXTS["azureml"], "the download did not finish; fix that, then run", True)
    assert "then run:\n  python model-cache/download.py            # optional here: the Azure job" in steps
