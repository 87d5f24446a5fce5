"""The Azure ML path of a generated project (compute_target=azureml), offline and without credentials.

- The job submit.py builds passes azure-ai-ml's own validation; its YAML round-trips through load_job.
- Malformed specs and settings are refused with one-line errors.
- The real MLClient.jobs.create_or_update runs against a fake of the Azure endpoints (tests/azure_fake.py,
  in requests' transport adapter): the submitted job, environment and code upload are asserted, and no
  secret appears in any request.
- A socket guard refuses every non-loopback connection and DNS lookup, in this process and in the CLI
  subprocesses (through sitecustomize), so a test that reached the network would fail.
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from azure_fake import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, FailingCredential, FakeAzure, FakeCredential
from conftest import RUFF, bake, guard_this_process, guarded

# azure-ai-ml 1.35's schemas use marshmallow APIs that marshmallow 3.x flags for 4.0
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:.*Marshmallow4:Warning")

SECRET = "hf_SENTINEL_token_value_never_sent_0123456789"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def socket_guard(monkeypatch):
    guard_this_process(monkeypatch)


@pytest.fixture(scope="module")
def guard_env():
    """Environment for CLI subprocesses: the socket guard loads first, no Azure or HF identity leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE", "AZUREML", "HF_", "MSI_", "IDENTITY_"))}
    return guarded({k: v for k, v in env.items() if k != "PYTHONPATH"})


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    root = bake(
        tmp_path_factory.mktemp("azure"), compute_target="azureml", check_environment=False, download_model=False
    )
    _assert_data_prepared(root)
    return root


@pytest.fixture
def project_dir(baked, tmp_path):
    """A fresh copy of the baked project for each test, so tests may change files."""
    return Path(shutil.copytree(baked, tmp_path / baked.name))


def _assert_data_prepared(root: Path) -> None:
    """The post-generation hook prepared the sample data the job uploads (a failed step is a defect, not made up)."""
    config = json.loads((root / "fine-tuning/olive-config.json").read_text(encoding="utf-8"))
    for data_config in config.get("data_configs", []):
        path = root / data_config["load_dataset_config"]["data_files"]
        assert path.is_file() and path.stat().st_size > 0, f"{path}: the hook did not prepare it"


@pytest.fixture
def submit(project_dir, monkeypatch):
    """The project's submit.py, imported in-process (each project has its own setup/project.py)."""
    return _load(project_dir / "fine-tuning/azureml/submit.py", "submit_under_test", monkeypatch)


def _load(path: Path, name: str, monkeypatch):
    monkeypatch.delitem(sys.modules, "project", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delitem(sys.modules, "project", raising=False)
    monkeypatch.chdir(path.parent.parent.parent)
    for variable in [*getattr(module, "SETTINGS", {}).values(), "HF_TOKEN", "HF_TOKEN_KEY_VAULT"]:
        monkeypatch.delenv(variable, raising=False)
    return module


def _cli(python, args, cwd, env, timeout=180):
    return subprocess.run(
        [python, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _write_config(project_dir: Path, **extra) -> Path:
    config = {
        "subscription_id": SUBSCRIPTION,
        "resource_group": RESOURCE_GROUP,
        "workspace_name": WORKSPACE,
        "compute": "gpu-cluster",
        **extra,
    }
    path = project_dir / "fine-tuning/azureml/config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def _pins(project_dir: Path) -> list[str]:
    lines = (project_dir / "setup/requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# ---------------------------------------------------------------- the guard itself


def test_socket_guard_refuses_the_network(guard_env, python, tmp_path):
    probe = "import socket; socket.create_connection(('93.184.215.14', 443), timeout=5)"
    result = _cli(python, ["-c", probe], tmp_path, guard_env, timeout=60)
    assert result.returncode != 0 and "socket guard" in result.stderr  # the CLI subprocesses are guarded too

    import requests

    with pytest.raises(requests.exceptions.ConnectionError, match="socket guard"):
        requests.get("https://management.azure.com/", timeout=5)
    with pytest.raises(OSError, match="socket guard"):
        socket.create_connection(("93.184.215.14", 443), timeout=5)


# ---------------------------------------------------------------- dry run and the job spec


def test_dry_run_writes_a_job_yaml_that_azure_ai_ml_loads(project_dir, guard_env, python):
    _write_config(project_dir)  # ids are for the client only: they never reach the job spec
    result = _cli(python, ["fine-tuning/azureml/submit.py", "--dry-run"], project_dir, guard_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Job valid for compute 'gpu-cluster'" in result.stdout
    assert "code snapshot:" in result.stdout
    assert "Traceback" not in result.stderr

    from azure.ai.ml import load_job

    path = project_dir / "fine-tuning/azureml/job.generated.yml"
    job = load_job(path)  # azure-ai-ml's schema validation
    assert job.type == "command"
    assert (path.parent / job.code).resolve() == project_dir.resolve()
    assert job.command.split(" && ") == [
        "python fine-tuning/azureml/job_steps.py prepare",
        "python fine-tuning/run.py",
        "cp -r gen-model/. " + "$" + "{" * 2 + "outputs.gen_model" + "}" * 2 + "/",
    ]
    assert job.compute.removeprefix("azureml:") == "gpu-cluster"
    assert job.resources.instance_count == 1
    assert job.environment.image.startswith("mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04")
    pip = job.environment.conda_file["dependencies"][-1]["pip"]
    assert pip[: len(_pins(project_dir))] == _pins(project_dir)
    assert any(line.startswith("azure-identity==") for line in pip)
    assert job.outputs["gen_model"].mode == "upload"
    assert job.outputs["gen_model"].path.startswith("azureml://datastores/workspaceblobstore/paths/")
    assert job.environment_variables["OLIVE_DISABLE_TELEMETRY"] == "1"
    assert not job.inputs
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert spec["code"] == "../.."
    text = path.read_text(encoding="utf-8")
    assert SUBSCRIPTION not in text and RESOURCE_GROUP not in text and WORKSPACE not in text


def test_job_yaml_round_trips_through_load_job(submit, tmp_path):
    from azure.ai.ml import load_job

    settings = submit.load_settings(overrides={"compute": "a100-cluster", "instance_type": "gpu-a100"})
    job = submit.build_job(settings, data="azureml://datastores/training/paths/support-data/")
    submit.validate(job)
    path = submit.write_yaml(job, tmp_path / "job.yml")
    loaded = load_job(path)
    original = job._to_job()
    for field in ("command", "compute", "environment_variables", "experiment_name", "display_name"):
        assert getattr(loaded, field) == getattr(original, field), field
    assert loaded.resources.instance_count == 1 and loaded.resources.instance_type == "gpu-a100"
    assert loaded.inputs["data"].path == "azureml://datastores/training/paths/support-data/"
    assert loaded.inputs["data"].type == "uri_folder"
    assert "--data " + "$" + "{" * 2 + "inputs.data" + "}" * 2 in loaded.command
    assert loaded.environment.conda_file == original.environment.conda_file
    assert loaded.outputs["gen_model"].path == original.outputs["gen_model"].path
    # dumping the loaded job again gives the same spec
    again = submit.write_yaml(loaded, tmp_path / "again.yml")
    assert yaml.safe_load(again.read_text()) | {"code": None} == yaml.safe_load(path.read_text()) | {"code": None}


def test_a_local_data_folder_in_the_yaml_is_uploaded_by_az_ml(submit, project_dir, tmp_path, monkeypatch, capsys):
    # `az ml job create --file` loads the YAML with load_job and submits it: the local folder must come back as a
    # path relative to the file (uploaded), not as "azureml:<path>" (looked up as a data asset id)
    from azure.ai.ml import MLClient, load_job

    folder = tmp_path / "my data"
    folder.mkdir()
    for name in submit.project.data_files():
        (folder / Path(name).name).write_text('{"Question": "q", "Best Answer": "a"}\n', encoding="utf-8")
    assert submit.main(["--dry-run", "--data", str(folder)]) == 0, capsys.readouterr().err
    path = project_dir / "fine-tuning/azureml/job.generated.yml"
    written = yaml.safe_load(path.read_text(encoding="utf-8"))["inputs"]["data"]["path"]
    assert not written.startswith("azureml:") and not Path(written).is_absolute(), written

    loaded = load_job(path)
    assert (path.parent / loaded.inputs["data"].path).resolve() == folder.resolve()
    fake = FakeAzure().install(monkeypatch)
    client = MLClient(FakeCredential(), SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE, show_progress=False,
                      enable_telemetry=False)
    client.jobs.create_or_update(loaded)
    [put] = fake.job_puts()
    uri = put.json()["properties"]["inputs"]["data"]["uri"]
    assert uri.startswith("azureml://datastores/workspaceblobstore/paths/"), uri
    uploaded = {key.rsplit("/", 1)[-1] for key in fake.blobs}
    assert {Path(name).name for name in submit.project.data_files()} <= uploaded


@pytest.mark.parametrize(
    "change, message",
    [
        ({"resources": {"instance_count": "two"}}, "instance_count"),
        ({"command": None}, "command"),
        ({"outputs": {"gen_model": {"type": "uri_folder", "mode": "sideways"}}}, "mode"),
        ({"environment": {"image": None}}, "image"),
    ],
)
def test_malformed_job_specs_are_rejected(submit, tmp_path, change, message):
    from azure.ai.ml import load_job
    from azure.ai.ml.exceptions import MlException
    from marshmallow.exceptions import ValidationError

    path = submit.write_yaml(submit.build_job(submit.load_settings()), tmp_path / "job.yml")
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
            if key == "environment" and value.get("image") is None:
                spec[key].pop("image")
        elif value is None:
            spec.pop(key)
        else:
            spec[key] = value
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with pytest.raises((MlException, ValidationError, submit.SubmitError)) as caught:
        job = load_job(path)
        submit.validate(job)
    assert message in str(caught.value)


def test_a_command_that_binds_an_unknown_input_is_rejected(submit):
    job = submit.build_job(submit.load_settings())
    job.command += " --extra " + "$" + "{" * 2 + "inputs.missing" + "}" * 2
    with pytest.raises(submit.SubmitError, match="azure-ai-ml's validation"):
        submit.validate(job)


# ---------------------------------------------------------------- settings


def test_settings_come_from_the_file_then_the_environment_then_flags(submit, project_dir, monkeypatch):
    _write_config(project_dir, compute="file-cluster")
    assert submit.load_settings()["compute"] == "file-cluster"
    monkeypatch.setenv("AZUREML_COMPUTE", "env-cluster")
    settings = submit.load_settings()
    assert settings["compute"] == "env-cluster"
    assert settings["workspace_name"] == WORKSPACE
    assert submit.load_settings(overrides={"compute": "flag-cluster"})["compute"] == "flag-cluster"
    monkeypatch.delenv("AZUREML_COMPUTE")
    (project_dir / "fine-tuning/azureml/config.json").unlink()
    assert submit.load_settings()["compute"] == "gpu-cluster"


@pytest.mark.parametrize(
    "config, message",
    [
        (None, "placeholder"),  # the example file, copied unchanged
        ({"subscription_id": SUBSCRIPTION, "hf_token": SECRET}, r"unknown key\(s\) hf_token; allowed"),
        ({"compute": 4}, "write it as a JSON string"),
        ({"compute": "gpu cluster!"}, "not a compute name"),
        ({"hf_token_key_vault": "kv-contoso"}, "go together"),
        ("{not json", "not JSON"),
    ],
)
def test_bad_settings_are_refused(submit, project_dir, config, message):
    path = project_dir / "fine-tuning/azureml/config.json"
    if config is None:
        shutil.copyfile(path.parent / "config.example.json", path)
    else:
        path.write_text(config if isinstance(config, str) else json.dumps(config), encoding="utf-8")
    with pytest.raises(submit.SubmitError, match=message) as caught:
        submit.load_settings()
    assert SECRET not in str(caught.value)


def test_an_empty_compute_flag_is_refused(submit, project_dir, capsys):
    """--compute '' (an unset shell variable) silently trained on the default cluster."""
    _write_config(project_dir)
    assert submit.main(["--dry-run", "--compute", ""]) == 1
    assert _error_line(capsys.readouterr().err) == "ERROR: --compute: compute is empty; set your own value"


@pytest.mark.parametrize("source", ["flag", "environment", "file"])
def test_a_placeholder_is_blamed_on_where_it_came_from(submit, project_dir, monkeypatch, capsys, source):
    config = project_dir / "fine-tuning/azureml/config.json"
    args = ["--dry-run"]
    if source == "flag":
        args += ["--compute", "<x>"]
    elif source == "environment":
        monkeypatch.setenv("AZUREML_COMPUTE", "<x>")
    else:
        _write_config(project_dir, compute="<x>")
    assert submit.main(args) == 1
    error = _error_line(capsys.readouterr().err)
    where = {"flag": "--compute", "environment": "AZUREML_COMPUTE", "file": str(config)}[source]
    assert error.startswith(f"ERROR: {where}: compute is '<x>', a placeholder"), error
    if source != "file":
        assert "config.json" not in error and "config.example.json" not in error, error


def test_a_token_given_as_the_secret_name_is_refused_without_repeating_it(submit, project_dir, capsys):
    """The value goes into the job's environment and log: a pasted token would be published with the job."""
    _write_config(project_dir, hf_token_key_vault="kv-contoso", hf_token_secret=SECRET)
    assert submit.main(["--dry-run"]) == 1
    out = capsys.readouterr()
    error = _error_line(out.err)
    assert "hf_token_secret is not a Key Vault secret name" in error and SECRET not in out.out + out.err
    assert not (project_dir / "fine-tuning/azureml/job.generated.yml").exists()
    _write_config(project_dir, hf_token_key_vault="kv contoso!", hf_token_secret="hf-token")
    assert submit.main(["--dry-run"]) == 1
    assert "hf_token_key_vault is not a Key Vault name" in _error_line(capsys.readouterr().err)
    _write_config(project_dir, hf_token_key_vault="kv-contoso", hf_token_secret="hf-token")
    assert submit.main(["--dry-run"]) == 0, capsys.readouterr().err


def test_a_git_repository_stays_out_of_the_code_upload(submit, project_dir, capsys):
    """A git remote URL (or a CI's extraheader) can carry a token, and the history keeps every file ever committed."""
    git = shutil.which("git")
    assert git, "the test environment has git"
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    for args in (["init", "-q"], ["remote", "add", "origin", f"https://x-access-token:{SECRET}@example.com/r.git"],
                 ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run([git, *args], cwd=project_dir, env=env, check=True, capture_output=True)
    _write_config(project_dir)
    assert submit.main(["--dry-run"]) == 0, capsys.readouterr().err  # the generated .gitignore lists .git/
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    uploads = [name for _, name in get_upload_files_from_folder(project_dir, ignore_file=get_ignore_file(project_dir))]
    assert uploads and not [name for name in uploads if name.startswith(".git/")]
    # an .amlignore replaces .gitignore: without .git/ in it, the folder is refused before anything is sent
    (project_dir / ".amlignore").write_text("model-cache/*/\ngen-model/*\nfine-tuning/azureml/config.json\n",
                                            encoding="utf-8")
    assert submit.main(["--dry-run"]) == 1
    out = capsys.readouterr()
    error = _error_line(out.err)
    assert error.startswith("ERROR: .git/") and "add them to .amlignore" in error, error
    assert SECRET not in out.out + out.err


def test_a_broken_olive_config_is_one_error_line(submit, project_dir, capsys):
    """The job reads the data files the Olive config names: the same reader, the same one line, as run.py's."""
    config = project_dir / "fine-tuning/olive-config.json"
    config.write_text(config.read_text(encoding="utf-8").rstrip()[:-1] + ",}", encoding="utf-8")
    _write_config(project_dir)
    assert submit.main(["--dry-run"]) == 1
    error = _error_line(capsys.readouterr().err)
    assert error.startswith("ERROR: fine-tuning/olive-config.json: not valid JSON (line "), error


def test_the_example_file_lists_only_known_keys(submit, project_dir):
    example = json.loads((project_dir / "fine-tuning/azureml/config.example.json").read_text(encoding="utf-8"))
    assert set(example) <= set(submit.SETTINGS)
    assert set(submit.WORKSPACE_KEYS) <= set(example)


# ---------------------------------------------------------------- CLI errors: one line, no traceback


def _error_line(stderr: str) -> str:
    """The one ERROR line; azure-ai-ml may print colour resets and blank lines around it."""
    errors = [line for line in stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def _one_error_line(result, *fragments):
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_submit_without_workspace_settings_says_how_to_set_them(project_dir, guard_env, python):
    result = _cli(python, ["fine-tuning/azureml/submit.py"], project_dir, guard_env)
    _one_error_line(result, "no Azure ML workspace configured", "config.example.json", "AZURE_SUBSCRIPTION_ID")


def test_placeholders_never_reach_a_job(project_dir, guard_env, python):
    """The example file copied unchanged (README step 3): a submit is refused; the dry run (step 5, no Azure
    needed) holds no workspace id, so it runs and names the ids still to set."""
    shutil.copyfile(
        project_dir / "fine-tuning/azureml/config.example.json", project_dir / "fine-tuning/azureml/config.json"
    )
    result = _cli(python, ["fine-tuning/azureml/submit.py"], project_dir, guard_env)
    _one_error_line(result, "placeholder", "<subscription-id>")
    job_yaml = project_dir / "fine-tuning/azureml/job.generated.yml"
    assert not job_yaml.exists()
    dry = _cli(python, ["fine-tuning/azureml/submit.py", "--dry-run"], project_dir, guard_env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip().splitlines()[-1] == (
        "Before submitting, set subscription_id, resource_group, workspace_name (step 3 of "
        "fine-tuning/azureml/README.md)"
    )
    assert job_yaml.is_file()
    # a placeholder the job would hold is refused in a dry run too
    _write_config(project_dir, compute="<compute-name>")
    _one_error_line(_cli(python, ["fine-tuning/azureml/submit.py", "--dry-run"], project_dir, guard_env),
                    "compute is '<compute-name>', a placeholder")


def test_a_local_data_folder_must_hold_the_data_and_no_secret(project_dir, guard_env, python, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "raw.csv").write_text("Question,Best Answer\nq,a\n", encoding="utf-8")
    dry_run = [python, "fine-tuning/azureml/submit.py", "--dry-run", "--data", str(folder)]
    _one_error_line(subprocess.run(dry_run, cwd=project_dir, env=guard_env, capture_output=True, text=True),
                    "no eval.jsonl, train.jsonl there", "python datasets/prepare.py")
    for name in ("train.jsonl", "eval.jsonl"):
        shutil.copy(project_dir / "datasets" / name, folder / name)
    (folder / "keys").mkdir()
    (folder / "keys/id_rsa").write_text("private", encoding="utf-8")
    _one_error_line(subprocess.run(dry_run, cwd=project_dir, env=guard_env, capture_output=True, text=True),
                    "keys/id_rsa would be uploaded with the data and may hold a secret")
    (folder / "keys/id_rsa").unlink()
    # a linked folder is uploaded too (azure-ai-ml follows it): its secret is refused as well
    linked = tmp_path / "elsewhere"
    linked.mkdir()
    (linked / ".env").write_text("HF_TOKEN=x\n", encoding="utf-8")
    (folder / "extra").symlink_to(linked, target_is_directory=True)
    _one_error_line(subprocess.run(dry_run, cwd=project_dir, env=guard_env, capture_output=True, text=True),
                    "extra/.env would be uploaded with the data and may hold a secret")
    (folder / "extra").unlink()
    done = subprocess.run(dry_run, cwd=project_dir, env=guard_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_config_file_that_is_not_there_is_named(project_dir, guard_env, python, tmp_path):
    result = _cli(python, ["fine-tuning/azureml/submit.py", "--dry-run", "--config", str(tmp_path / "nope.json")],
                  project_dir, guard_env)
    _one_error_line(result, f"--config {tmp_path / 'nope.json'}: no such file")


def test_missing_data_is_reported(project_dir, guard_env, python):
    result = _cli(python, ["fine-tuning/azureml/submit.py", "--dry-run", "--data", "no/such/folder"], project_dir,
                  guard_env)
    _one_error_line(result, "--data no/such/folder: no such folder")
    for path in (project_dir / "datasets").glob("*.jsonl"):
        path.unlink()
    result = _cli(python, ["fine-tuning/azureml/submit.py", "--dry-run"], project_dir, guard_env)
    _one_error_line(result, "training data not found", "--data azureml://datastores/")


def test_not_logged_in_gives_the_az_login_hint(submit, project_dir, capsys):
    _write_config(project_dir)
    assert submit.main(["--no-stream"], credential=FailingCredential()) == 1
    error = _error_line(capsys.readouterr().err)
    assert error.startswith("ERROR: not logged in to Azure") and "az login" in error


def test_not_logged_in_without_the_azure_cli_is_one_line(project_dir, guard_env, python):
    # the real DefaultAzureCredential in a fresh process: no env credentials, no az CLI, managed identity
    # unreachable (socket guard); azure-identity's own logging would add a dozen lines before the ERROR line
    _write_config(project_dir)
    env = {**guard_env, "PATH": "/nonexistent", "AZURE_CONFIG_DIR": str(project_dir / "no-az-config")}
    result = _cli(python, ["fine-tuning/azureml/submit.py", "--no-stream"], project_dir, env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout + result.stderr
    assert lines[0].startswith("ERROR: not logged in to Azure"), lines[0]
    assert "install the Azure CLI" in lines[0] and "az login" in lines[0]


def test_a_login_that_fails_names_its_cause_without_ids_or_secret(project_dir, guard_env, python):
    # service-principal variables set, as in CI, but login.microsoftonline.com unreachable (socket guard): the
    # real DefaultAzureCredential fails in EnvironmentCredential, which is not "not logged in"
    _write_config(project_dir)
    ids = {
        "AZURE_CLIENT_ID": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "AZURE_TENANT_ID": "a1b2c3d4-e5f6-4789-8abc-def012345678",
    }
    env = {**guard_env, **ids, "AZURE_CLIENT_SECRET": "do-not-print-me", "PATH": "/nonexistent"}
    result = _cli(python, ["fine-tuning/azureml/submit.py", "--no-stream"], project_dir, env)
    error = _one_error_line(result, "ERROR: Azure login failed: EnvironmentCredential could not authenticate (")
    assert "AZURE_CLIENT_SECRET" in error and "login.microsoftonline.com" in error
    for secret in [*ids.values(), "do-not-print-me", SUBSCRIPTION]:
        assert secret not in result.stdout + result.stderr


def test_not_logged_in_with_the_azure_cli_says_az_login(submit, project_dir, tmp_path, monkeypatch, capsys, caplog):
    # an `az` that answers as it does before `az login`; DefaultAzureCredential's AzureCliCredential runs it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    az = bin_dir / "az"
    az.write_text("#!/bin/sh\necho \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1\n")
    az.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(project_dir / "no-az-config"))
    _write_config(project_dir)
    caplog.set_level("DEBUG")
    assert submit.main(["--no-stream"]) == 1
    error = _error_line(capsys.readouterr().err)
    assert "run `az login`" in error and "install the Azure CLI" not in error, error
    noise = [r.getMessage() for r in caplog.records if r.name.startswith(("azure.identity", "azure.core.pipeline"))]
    assert not noise, noise


def test_unknown_compute_is_reported(submit, project_dir, monkeypatch, capsys):
    fake = FakeAzure(computes={"other-cluster": "Standard_NC24ads_A100_v4"}).install(monkeypatch)
    _write_config(project_dir)
    assert submit.main(["--no-stream"], credential=FakeCredential(), show_progress=False) == 1
    error = _error_line(capsys.readouterr().err)
    assert error.startswith("ERROR: compute 'gpu-cluster' not found in workspace 'ws-fake'")
    assert "az ml compute create" in error
    assert not fake.job_puts()


def test_unknown_workspace_is_reported(submit, project_dir, monkeypatch, capsys):
    fake = FakeAzure().install(monkeypatch)
    _write_config(project_dir, workspace_name="ws-typo")
    assert submit.main(["--no-stream"], credential=FakeCredential(), show_progress=False) == 1
    error = _error_line(capsys.readouterr().err)
    assert error.startswith("ERROR: workspace 'ws-typo' not found in resource group 'rg-fake'")
    assert SUBSCRIPTION not in error  # ids stay out of the output
    assert not fake.job_puts()


# ---------------------------------------------------------------- the real submission path, faked at the transport


@pytest.fixture
def submitted(submit, project_dir, monkeypatch, capsys):
    """Submit through the real MLClient against the fake, with weights and secrets lying around."""
    fake = FakeAzure().install(monkeypatch)
    model_dir = project_dir / json.loads((project_dir / "setup/project.json").read_text())["model_dir"]
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"\0" * 4096)
    (project_dir / "gen-model/adapter").mkdir(parents=True)
    (project_dir / "gen-model/adapter/adapter_model.safetensors").write_bytes(b"\0" * 1024)
    (project_dir / ".env").write_text(f"HF_TOKEN={SECRET}\n")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    _write_config(project_dir, hf_token_key_vault="kv-contoso", hf_token_secret="hf-token")
    rc = submit.main(["--no-stream"], credential=FakeCredential(), show_progress=False)
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    return fake, out


def test_submission_sends_the_validated_job(submitted, project_dir):
    fake, out = submitted
    assert not fake.unhandled, [(r.method, r.url) for r in fake.unhandled]
    [put] = fake.job_puts()
    assert "Submitted " in out.out
    job = put.json()["properties"]
    assert job["jobType"] == "Command"
    assert job["command"] == (
        "python fine-tuning/azureml/job_steps.py prepare && python fine-tuning/run.py && "
        "cp -r gen-model/. " + "$" + "{" * 2 + "outputs.gen_model" + "}" * 2 + "/"
    )
    assert job["computeId"].endswith(f"/workspaces/{WORKSPACE}/computes/gpu-cluster")
    assert job["resources"]["instanceCount"] == 1
    assert job["experimentName"] == project_dir.name
    assert job["environmentVariables"] == {
        "OLIVE_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONUNBUFFERED": "1",
        "HF_TOKEN_KEY_VAULT": "kv-contoso",
        "HF_TOKEN_SECRET_NAME": "hf-token",
    }
    assert not job.get("inputs")
    output = job["outputs"]["gen_model"]
    assert output["jobOutputType"] == "uri_folder"
    assert output["mode"] == "Upload"
    assert output["uri"].startswith(f"azureml://datastores/workspaceblobstore/paths/{project_dir.name}/")
    assert "/codes/" in job["codeId"] and "/environments/" in job["environmentId"]


def test_submission_builds_the_environment_from_setup_requirements(submitted, project_dir):
    fake, _ = submitted
    [env_put] = [r for r in fake.requests if r.method == "PUT" and "/environments/" in r.path]
    env = env_put.json()["properties"]
    assert env["image"] == "mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04:latest"
    conda = yaml.safe_load(env["condaFile"])
    assert conda["channels"] == ["conda-forge"]
    assert conda["dependencies"][0] == "python=3.11"
    pip = conda["dependencies"][-1]["pip"]
    assert pip[: len(_pins(project_dir))] == _pins(project_dir)
    [put] = fake.job_puts()
    assert put.json()["properties"]["environmentId"].endswith(env_put.path.split("/environments/")[1])


def test_code_upload_leaves_weights_and_settings_behind(submitted, project_dir):
    fake, _ = submitted
    uploaded = {key.split("/", 3)[-1] for key in fake.blobs}
    snapshot = f"{project_dir.name}/"
    names = {name[len(snapshot):] if name.startswith(snapshot) else name for name in uploaded}
    assert {"fine-tuning/run.py", "fine-tuning/olive-config.json", "setup/requirements.txt",
            "fine-tuning/azureml/job_steps.py", "model-cache/download.py"} <= names
    data = json.loads((project_dir / "fine-tuning/olive-config.json").read_text())["data_configs"]
    assert {d["load_dataset_config"]["data_files"] for d in data} <= names
    for name in names:
        assert not name.endswith(".safetensors"), name
        assert not name.startswith(("model-cache/microsoft", "gen-model/adapter")), name
        assert name not in ("fine-tuning/azureml/config.json", ".env"), name


def test_no_secret_in_any_request(submitted):
    fake, out = submitted
    assert fake.requests
    for request in fake.requests:
        assert SECRET.encode() not in request.body, request.url
        assert SECRET not in request.url
        assert all(SECRET not in str(value) for value in request.headers.values())
        # the bearer token travels in the Authorization header only
        assert b"fake-bearer-token" not in request.body
    arm = [r for r in fake.requests if r.host == "management.azure.com"]
    assert arm and all(r.headers.get("Authorization", "").startswith("Bearer ") for r in arm)
    assert SECRET not in out.out + out.err




@pytest.mark.parametrize(
    "secret, fix",
    [
        (".env", ".amlignore"),
        (".env.local", ".amlignore"),
        ("fine-tuning/azureml/config.json", ".amlignore"),
        ("deploy/client.pem", ".gitignore"),
        (".netrc", ".gitignore"),
        # where a login lands when HF_HOME or AZURE_CONFIG_DIR point into the project, direnv's file, env files
        (".hf/token", ".amlignore"),
        (".azure/msal_token_cache.json", ".amlignore"),
        ("azure-credentials.json", ".amlignore"),
        (".envrc", ".amlignore"),
        ("secrets/hf.env", ".amlignore"),
    ],
)
def test_secret_files_never_leave_with_the_code(submit, project_dir, monkeypatch, capsys, secret, fix):
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    fake = FakeAzure().install(monkeypatch)
    _write_config(project_dir)
    if fix == ".amlignore":  # weights and config.json ignored, but not the secret: it replaces .gitignore
        ignored = ["model-cache/*/", "gen-model/*/", "fine-tuning/azureml/config.json"]
        (project_dir / ".amlignore").write_text("\n".join(i for i in ignored if i != secret) + "\n", encoding="utf-8")
    path = project_dir / secret
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(f"HF_TOKEN={SECRET}\n", encoding="utf-8")
    # azure-ai-ml itself would upload it: an .amlignore replaces .gitignore
    uploads = {name for _, name in get_upload_files_from_folder(project_dir, ignore_file=get_ignore_file(project_dir))}
    assert secret in uploads

    for args in (["--no-stream"], ["--dry-run"]):
        assert submit.main(args, credential=FakeCredential(), show_progress=False) == 1
        out = capsys.readouterr()
        error = _error_line(out.err)
        assert error.startswith(f"ERROR: {secret}: would be uploaded with the job's code"), error
        assert f"add it to {fix}" in error, error
        assert SECRET not in out.out + out.err
    assert not fake.requests  # refused before signing in or sending anything
    assert not (project_dir / "fine-tuning/azureml/job.generated.yml").exists()

    ignore = project_dir / fix
    ignore.write_text(ignore.read_text(encoding="utf-8") + f"\n{secret}\n", encoding="utf-8")
    assert submit.main(["--dry-run"]) == 0, capsys.readouterr().err


def test_data_from_a_datastore_becomes_a_job_input(submit, project_dir, monkeypatch, capsys):
    fake = FakeAzure().install(monkeypatch)
    _write_config(project_dir)
    uri = "azureml://datastores/training/paths/support/v2/"
    assert submit.main(["--no-stream", "--data", uri], credential=FakeCredential(), show_progress=False) == 0
    job = fake.job_puts()[0].json()["properties"]
    assert job["inputs"]["data"] == {"jobInputType": "uri_folder", "mode": "Download", "uri": uri}
    assert " --data " + "$" + "{" * 2 + "inputs.data" + "}" * 2 + " && " in job["command"]


def test_azure_refusal_is_one_line(submit, project_dir, monkeypatch, capsys):
    fake = FakeAzure().install(monkeypatch)

    def refuse(r, name):
        return 400, {"error": {"code": "UserError", "message": "Quota exceeded for Standard_NC24ads_A100_v4"}}, {}

    monkeypatch.setattr(fake, "job", refuse)
    _write_config(project_dir)
    assert submit.main(["--no-stream"], credential=FakeCredential(), show_progress=False) == 1
    error = _error_line(capsys.readouterr().err)
    assert error.startswith("ERROR: Azure ML refused the job:") and "Quota exceeded" in error


# ---------------------------------------------------------------- download


def test_download_places_outputs_and_repoints_outputs_json(submit, tmp_path):
    job_dir = tmp_path / "named-outputs/gen_model"
    (job_dir / "onnx").mkdir(parents=True)
    (job_dir / "onnx/model.onnx").write_bytes(b"onnx")
    (job_dir / "adapter").mkdir()
    job_root = "/mnt/azureml/cr/j/abc/exe/wd/gen-model"
    record = {"adapter": f"{job_root}/adapter", "merged": f"{job_root}/merged", "onnx": f"{job_root}/onnx"}
    (job_dir / "outputs.json").write_text(json.dumps(record))
    gen = tmp_path / "gen-model"
    (gen / "adapter").mkdir(parents=True)
    (gen / "adapter/stale.txt").write_text("old")
    placed = submit.place_outputs(job_dir, gen)
    assert {p.name for p in placed} == {"onnx", "adapter", "outputs.json"}
    assert not (gen / "adapter/stale.txt").exists()
    assert json.loads((gen / "outputs.json").read_text()) == {
        name: str(gen / name) for name in ("adapter", "merged", "onnx")
    }
    # today's run.py records paths relative to gen-model/: they stay so
    relative = {"adapter": "adapter", "merged": "merged/model", "onnx": "onnx"}
    (job_dir / "adapter").mkdir()
    (job_dir / "outputs.json").write_text(json.dumps(relative))
    submit.place_outputs(job_dir, gen)
    assert json.loads((gen / "outputs.json").read_text()) == relative
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(submit.SubmitError, match="output is empty"):
        submit.place_outputs(empty, gen)


def test_download_of_an_unknown_job_is_one_line(submit, tmp_path):
    from azure.core.exceptions import ResourceNotFoundError

    class Jobs:
        def download(self, *args, **kwargs):
            raise ResourceNotFoundError("not found")

    class Client:
        jobs = Jobs()

    with pytest.raises(submit.SubmitError, match="job 'nope' not found"):
        submit.download(Client(), "nope", tmp_path / "gen-model")


# ---------------------------------------------------------------- inside the job


@pytest.fixture
def steps(project_dir, monkeypatch):
    return _load(project_dir / "fine-tuning/azureml/job_steps.py", "job_steps_under_test", monkeypatch)


def test_prepare_copies_the_data_input_into_datasets(steps, project_dir, tmp_path):
    source = tmp_path / "mounted"
    source.mkdir()
    names = steps.project.data_files()
    assert names
    for name in names:
        (source / Path(name).name).write_text('{"Question": "new", "Best Answer": "rows"}\n')
    copied = steps.stage_data(source)
    assert sorted(copied) == sorted(names)
    assert "new" in (project_dir / names[0]).read_text()
    (source / Path(names[0]).name).unlink()
    for name in names:
        (project_dir / name).unlink()
    with pytest.raises(steps.StepError, match="has no"):
        steps.stage_data(source)


def test_the_hf_token_reaches_only_the_download(steps, project_dir, monkeypatch, capfd):
    # a stand-in download.py that reports whether it got the token, without writing it anywhere
    (project_dir / "model-cache/download.py").write_text(textwrap.dedent(f"""
        import os, pathlib
        ok = os.environ.get("HF_TOKEN") == {SECRET!r}
        pathlib.Path("token-seen.txt").write_text("yes" if ok else "no")
    """))
    reads = []

    def reader(vault, name):
        reads.append((vault, name))
        return SECRET

    environ = {"HF_TOKEN_KEY_VAULT": "kv-contoso", "HF_TOKEN_SECRET_NAME": "hf-token", "PATH": "/usr/bin"}
    steps.fetch_model(environ, secret_reader=reader)
    assert reads == [("kv-contoso", "hf-token")]
    assert (project_dir / "token-seen.txt").read_text() == "yes"
    captured = capfd.readouterr()
    assert SECRET not in captured.out + captured.err
    assert "kv-contoso" in captured.out


def test_read_secret_uses_the_managed_identity_token(steps):
    seen = {}

    class Credential:
        def get_token(self, scope):
            seen["scope"] = scope
            return FakeCredential().get_token(scope)

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return json.dumps({"value": SECRET, "id": "x"}).encode()

    def urlopen(request, timeout):
        seen["url"] = request.full_url
        seen["auth"] = request.get_header("Authorization")
        return Response()

    assert steps.read_secret("kv-contoso", "hf-token", Credential(), urlopen) == SECRET
    assert seen["scope"] == "https://vault.azure.net/.default"
    assert seen["url"] == "https://kv-contoso.vault.azure.net/secrets/hf-token?api-version=7.4"
    assert seen["auth"].startswith("Bearer ")


def test_read_secret_failure_is_one_line_without_the_token(steps):
    import urllib.error

    def forbidden(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 403, "Forbidden", {}, None)

    with pytest.raises(steps.StepError, match="HTTP 403.*Key Vault Secrets User"):
        steps.read_secret("kv-contoso", "hf-token", FakeCredential(), forbidden)
    with pytest.raises(steps.StepError, match="no managed identity token"):
        steps.read_secret("kv-contoso", "hf-token", FailingCredential(), forbidden)


# ---------------------------------------------------------------- lint


def test_azureml_scripts_pass_the_project_ruff_config(project_dir):
    result = subprocess.run(
        [RUFF, "check", "--no-cache", "fine-tuning/azureml"], cwd=project_dir, capture_output=True, text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
