"""Run this project's Olive workflow on an Azure ML GPU cluster as an azure-ai-ml command job.

    python fine-tuning/azureml/submit.py --dry-run          # validate the job locally, write its YAML
    python fine-tuning/azureml/submit.py                    # submit it, then stream the logs
    python fine-tuning/azureml/submit.py --download <job>   # put a finished job's gen-model/ here

The job runs the same LocalSystem workflow as a local run (`python fine-tuning/run.py`) on one node:
olive-ai removed its AzureML system (`systems.aml`, `azureml_client`) in 0.9.3. Workspace identity comes from
fine-tuning/azureml/config.json (git-ignored; see config.example.json) or the environment; see README.md.
"""

import argparse
import contextlib
import fnmatch
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "setup"))
import project  # noqa: E402

CONFIG_FILE = HERE / "config.json"
JOB_YAML = HERE / "job.generated.yml"
SUBMIT_REQUIREMENTS = HERE / "requirements.txt"
# The newest AzureML GPU base image (github.com/Azure/AzureML-Containers, images/). PyPI's torch wheels bring
# their own CUDA runtime, so the image's CUDA only has to suit the node's driver.
IMAGE = "mcr.microsoft.com/azureml/openmpi5.0-cuda12.6-ubuntu24.04:latest"
PYTHON = "3.11"  # the Python the pinned set is tested with
OUTPUT_NAME = "gen_model"

# config.json key -> environment variable that overrides it; anything else in the file is refused
SETTINGS = {
    "subscription_id": "AZURE_SUBSCRIPTION_ID",
    "resource_group": "AZURE_RESOURCE_GROUP",
    "workspace_name": "AZUREML_WORKSPACE_NAME",
    "compute": "AZUREML_COMPUTE",
    "instance_type": "AZUREML_INSTANCE_TYPE",
    "output_datastore": "AZUREML_OUTPUT_DATASTORE",
    "hf_token_key_vault": "HF_TOKEN_KEY_VAULT",
    "hf_token_secret": "HF_TOKEN_SECRET_NAME",
}
DEFAULTS = {"compute": "gpu-cluster", "output_datastore": "workspaceblobstore"}
WORKSPACE_KEYS = ("subscription_id", "resource_group", "workspace_name")
PLACEHOLDER = re.compile(r"<[^>]*>|^\s*$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$")
# Files that commonly hold a token, password or private key. The code snapshot is stored in the workspace's
# storage account, readable by everyone with access to the workspace, so these are refused before any upload.
SECRET_FILES = (
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.pfx",
    "*.p12",
    ".netrc",
    ".git-credentials",
    ".pypirc",
    "id_rsa",
    "id_ecdsa",
    "id_ed25519",
    "*.env",
    ".envrc",
    "token",  # huggingface_hub's login file (HF_HOME/token), and its stored_tokens
    "stored_tokens",
    "msal_token_cache*",  # the Azure CLI's login cache, where AZURE_CONFIG_DIR points into the project
    "service_principal_entries.json",
    "*credentials*.json",
)
# Folders that hold credentials as a whole: git's (a remote URL or an extraheader can carry a token, and the
# history keeps every file ever committed) and the Azure CLI's
SECRET_FOLDERS = (".git", ".azure")
# Key Vault's own rules: a secret's name, a vault's name (or its URL); an HF token has '_', so it never passes
SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
VAULT = re.compile(r"^([A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]|https://[^\s/]+/?)$")
DATA_URI = re.compile(r"^(azureml://datastores/[^/]+/paths/.+|azureml:[^:@]+[:@].+|(https|wasbs|abfss)://.+)$")


class SubmitError(RuntimeError):
    """An expected failure; the message says what to do."""


def binding(expression: str) -> str:
    """An Azure ML job binding such as outputs.gen_model, built so no Jinja delimiter is spelled out here."""
    return "$" + "{" * 2 + expression + "}" * 2


# ---------------------------------------------------------------- settings


def load_settings(
    config_file: Path = CONFIG_FILE, environ=os.environ, overrides: dict | None = None, dry_run: bool = False
) -> dict:
    """Defaults, then config.json, then environment variables, then command-line flags.

    dry_run: the workspace ids may still be placeholders (the example file, copied): the job holds none of them,
    so they are left out and the dry run says so; any other placeholder would reach the job and is refused."""
    settings = dict(DEFAULTS)
    source = dict.fromkeys(DEFAULTS, "default")  # where each value came from, for the error messages
    if config_file.is_file():
        from_file = _read_config(config_file)
        settings.update(from_file)
        source.update(dict.fromkeys(from_file, str(config_file)))
    for key, variable in SETTINGS.items():
        if environ.get(variable):
            settings[key] = environ[variable]
            source[key] = variable
    for key, value in (overrides or {}).items():
        if value is not None:  # an empty flag is refused below, not taken for "not given"
            settings[key] = value
            source[key] = "--" + key.replace("_", "-")
    for key, value in settings.items():
        where = source[key]
        if not isinstance(value, str):
            raise SubmitError(f"{where}: {key} is {value!r}; write it as a JSON string")
        if PLACEHOLDER.search(value):
            if dry_run and key in WORKSPACE_KEYS:
                continue
            fix = " (see config.example.json)" if where == str(config_file) else ""
            found = f"{value!r}, a placeholder" if value.strip() else "empty"
            raise SubmitError(f"{where}: {key} is {found}; set your own value{fix}")
    for key in WORKSPACE_KEYS:
        if dry_run and PLACEHOLDER.search(settings.get(key) or ""):
            settings.pop(key, None)
    if not NAME.match(settings["compute"]):
        raise SubmitError(f"compute {settings['compute']!r} is not a compute name; use the cluster's name in Azure ML")
    if bool(settings.get("hf_token_key_vault")) != bool(settings.get("hf_token_secret")):
        raise SubmitError(
            "hf_token_key_vault and hf_token_secret go together: set both (the vault and the secret's name) or neither"
        )
    # the values go into the job's environment and its log: a token pasted here would be published, so it is
    # refused without being repeated
    if settings.get("hf_token_secret") and not SECRET_NAME.match(settings["hf_token_secret"]):
        raise SubmitError(
            f"{source['hf_token_secret']}: hf_token_secret is not a Key Vault secret name (letters, digits and '-'); "
            "give the name the token is stored under (e.g. hf-token), never the token itself"
        )
    if settings.get("hf_token_key_vault") and not VAULT.match(settings["hf_token_key_vault"]):
        raise SubmitError(
            f"{source['hf_token_key_vault']}: hf_token_key_vault is not a Key Vault name (3-24 letters, digits and "
            "'-') or URL; give the vault's name"
        )
    return settings


def _read_config(config_file: Path) -> dict:
    try:
        data = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SubmitError(f"{config_file}: not JSON ({error}); copy config.example.json and fill it in") from None
    if not isinstance(data, dict):
        raise SubmitError(f"{config_file}: expected a JSON object; copy config.example.json and fill it in")
    unknown = sorted(set(data) - set(SETTINGS))
    if unknown:
        raise SubmitError(
            f"{config_file}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SETTINGS)} "
            "(a token or key never goes in this file: keep the HF token in Key Vault)"
        )
    return data


def require_workspace(settings: dict, config_file: Path = CONFIG_FILE) -> None:
    missing = [key for key in WORKSPACE_KEYS if not settings.get(key)]
    if missing:
        variables = ", ".join(SETTINGS[key] for key in missing)
        raise SubmitError(
            f"no Azure ML workspace configured ({', '.join(missing)} missing): copy "
            f"{config_file.parent / 'config.example.json'} to {config_file} and fill it in (or use the config.json "
            f"the workspace's Azure portal page offers), or set {variables}"
        )


# ---------------------------------------------------------------- the job


def conda_environment(requirements: Path = project.ROOT / "setup" / "requirements.txt") -> dict:
    """The job's conda file, made from setup/requirements.txt: one pinned set for local and Azure runs."""
    pins = _requirement_lines(requirements)
    # the job reads the HF token from Key Vault with azure-identity; same pin as the submitting side
    pins += [line for line in _requirement_lines(SUBMIT_REQUIREMENTS) if line.startswith("azure-identity")]
    # conda-forge: the defaults channel needs an Anaconda licence in many organisations
    return {
        "name": "olive-workflow",
        "channels": ["conda-forge"],
        "dependencies": [f"python={PYTHON}", "pip", {"pip": pins}],
    }


def _requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


def data_input(spec: str | None):
    """None: the data rides in the code snapshot (datasets/). Otherwise an Input the job copies into datasets/."""
    from azure.ai.ml import Input

    files = project.data_files()
    if spec is None:
        missing = [name for name in files if not (project.ROOT / name).is_file()]
        if missing:
            raise SubmitError(
                f"{missing[0]}: training data not found; put your data there (see datasets/README.md) or pass "
                "--data azureml://datastores/<datastore>/paths/<folder>"
            )
        return None
    if not files:
        raise SubmitError("--data: this project does not train (finetune_method none) and reads no data; drop --data")
    if DATA_URI.match(spec):
        return Input(type="uri_folder", path=spec, mode="download")
    folder = Path(spec).expanduser().resolve()
    names = [Path(f).name for f in files]  # the job copies the folder into datasets/ (job_steps.stage_data)
    if not folder.is_dir():
        raise SubmitError(
            f"--data {spec}: no such folder; give a local folder holding {', '.join(names)}, "
            "or azureml://datastores/<datastore>/paths/<folder>"
        )
    absent = [name for name in names if not (folder / name).is_file()]
    if absent:
        raise SubmitError(
            f"--data {spec}: no {', '.join(absent)} there, which fine-tuning/olive-config.json reads; make them with "
            "`python datasets/prepare.py <your data>` and give the folder holding them"
        )
    # the whole folder is uploaded, as the code is: the same refusal of secret-looking files, listed by azure-ai-ml's
    # own walk (it follows symbolic links to folders, which Path.rglob does not enter)
    from azure.ai.ml._utils._asset_utils import get_upload_files_from_folder

    secrets = sorted(name for _, name in get_upload_files_from_folder(folder) if _is_secret(name))
    if secrets:
        raise SubmitError(
            f"--data {spec}: {', '.join(secrets[:3])} would be uploaded with the data and may hold a secret; "
            f"give a folder with only the data ({', '.join(names)})"
        )
    return Input(type="uri_folder", path=str(folder), mode="download")


def job_command(with_data: bool) -> str:
    prepare = "python fine-tuning/azureml/job_steps.py prepare"
    if with_data:
        prepare += " --data " + binding("inputs.data")
    return " && ".join(
        [prepare, "python fine-tuning/run.py", f"cp -r gen-model/. {binding('outputs.' + OUTPUT_NAME)}/"]
    )


def experiment_name() -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", project.ROOT.name).strip("-")[:200] or "olive-workflow"


def build_job(settings: dict, data: str | None = None):
    """The command job: this folder as code, the pinned environment, one node of the cluster."""
    from azure.ai.ml import Output, command
    from azure.ai.ml.entities import Environment

    facts = project.load()
    data_in = data_input(data)
    experiment = experiment_name()
    output_path = f"azureml://datastores/{settings['output_datastore']}/paths/{experiment}/{binding('name')}/gen-model/"
    variables = {"OLIVE_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
    if settings.get("hf_token_key_vault"):
        # names only: the job reads the value itself, with the cluster's managed identity
        variables["HF_TOKEN_KEY_VAULT"] = settings["hf_token_key_vault"]
        variables["HF_TOKEN_SECRET_NAME"] = settings["hf_token_secret"]
    extra = {"instance_type": settings["instance_type"]} if settings.get("instance_type") else {}
    return command(
        code=str(project.ROOT),
        command=job_command(data_in is not None),
        environment=Environment(image=IMAGE, conda_file=conda_environment()),
        compute=settings["compute"],
        inputs={"data": data_in} if data_in is not None else {},
        outputs={OUTPUT_NAME: Output(type="uri_folder", mode="upload", path=output_path)},
        environment_variables=variables,
        # Olive's LoRA pass spreads the model over one node's GPUs; a second node would rerun everything
        instance_count=1,
        display_name=f"{experiment}-olive",
        experiment_name=experiment,
        description=f"olive run (LocalSystem) for {facts['base_model']}: fine-tuning/olive-config.json",
        tags={"base_model": facts["base_model"], "finetune_method": facts["finetune_method"]},
        **extra,
    )


def validate(job) -> None:
    """azure-ai-ml's own local checks: the command job schema, then the job's and environment's rules."""
    from azure.ai.ml.exceptions import ValidationException

    result = job._validate(raise_error=False)
    if not result.passed:
        raise SubmitError(f"the job does not pass azure-ai-ml's validation: {result.error_messages}")
    try:
        job._to_job()._validate()
    except ValidationException as error:
        raise SubmitError(f"the job does not pass azure-ai-ml's validation: {error.message}") from None


def write_yaml(job, path: Path = JOB_YAML) -> Path:
    """The job as `az ml job create --file` reads it, with code and local inputs relative to the file."""
    import yaml

    command_job = job._to_job()
    spec = json.loads(json.dumps(command_job._to_dict()))  # plain dicts for yaml.safe_dump
    spec["code"] = os.path.relpath(project.ROOT, path.parent)
    # azure-ai-ml dumps a local input folder as "azureml:<path>", which it reads back as a data asset id; a path
    # relative to the file is what `az ml job create --file` uploads
    base = Path(getattr(command_job, "base_path", None) or Path.cwd())
    for name, value in (spec.get("inputs") or {}).items():
        local = getattr(command_job.inputs.get(name), "path", None)
        is_local = isinstance(local, str) and (os.path.isabs(local) or not re.search("[:@]", local))
        if is_local and isinstance(value, dict):
            value["path"] = os.path.relpath(base / local, path.parent)
    # the environment is anonymous: Azure ML names it by the hash of image + conda file
    for key in ("name", "version", "tags"):
        spec["environment"].pop(key, None)
    spec = {key: value for key, value in spec.items() if value not in ({}, None)}
    header = (
        "# Written by fine-tuning/azureml/submit.py --dry-run; regenerate it rather than editing it.\n"
        "# Submit with: python fine-tuning/azureml/submit.py  (or: az ml job create --file <this file>)\n"
    )
    path.write_text(header + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def snapshot_summary(config_file: Path = CONFIG_FILE) -> str:
    """What Azure ML would upload as the job's code, by its own ignore rules (.amlignore, else .gitignore).

    Refuses a snapshot that holds a secret-looking file or the workspace config: an .amlignore replaces
    .gitignore, so a project with one can upload the .env that .gitignore keeps out of git.
    """
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    files = get_upload_files_from_folder(project.ROOT, ignore_file=get_ignore_file(project.ROOT))
    configs = {_relative(CONFIG_FILE), _relative(config_file)}
    refused = sorted(name for _, name in files if name in configs or _is_secret(name))
    if refused:
        ignore = ".amlignore" if (project.ROOT / ".amlignore").is_file() else ".gitignore"
        named = ", ".join(refused[:3]) + (f" and {len(refused) - 3} more" if len(refused) > 3 else "")
        it = "it" if len(refused) == 1 else "them"
        why = " (an .amlignore replaces .gitignore for the upload)" if ignore == ".amlignore" else ""
        raise SubmitError(
            f"{named}: would be uploaded with the job's code and may hold a secret: add {it} to {ignore}{why} "
            f"or move {it} out of the project"
        )
    sizes = sorted(((os.path.getsize(path), name) for path, name in files), reverse=True)
    total = sum(size for size, _ in sizes)
    line = f"code snapshot: {len(sizes)} files, {total / 2**20:.1f} MiB"
    if total > 100 * 2**20:
        biggest = ", ".join(f"{name} ({size / 2**20:.0f} MiB)" for size, name in sizes[:3])
        line += f"; largest: {biggest} - git-ignore what the job does not need"
    return line


# ---------------------------------------------------------------- Azure


# DefaultAzureCredential's message has a line per source it tried; a source that was set up but failed says so
AUTH_FAILED = re.compile(r"^\s*(\w+Credential): Authentication failed: (.+)$", re.MULTILINE)
# tenant and client ids in Entra's messages: kept out of the output like every Azure id
AZURE_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
LOGIN_SETTINGS = {
    "EnvironmentCredential": "AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET",
    "AzureCliCredential": "the Azure CLI's login (`az login` again)",
    "ManagedIdentityCredential": "this machine's managed identity",
}


def connect(settings: dict, credential=None, **client_kwargs):
    """An MLClient for the configured workspace, after proving the login works."""
    from azure.ai.ml import MLClient
    from azure.core.exceptions import ClientAuthenticationError

    # DefaultAzureCredential logs every source it tried (a dozen lines) before it raises; the error below
    # says what to do in one line
    with _quiet("azure.identity", "azure.core.pipeline"):
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        try:
            credential.get_token("https://management.azure.com/.default")
        except ClientAuthenticationError as error:
            # a source that was configured but failed (wrong secret, no network) is not "not logged in"
            failed = AUTH_FAILED.search(str(error))
            if failed:
                source, reason = failed.groups()
                raise SubmitError(
                    f"Azure login failed: {source} could not authenticate ({AZURE_ID.sub('<id>', reason)[:240]}): "
                    f"check {LOGIN_SETTINGS.get(source, 'its settings')} and that this machine reaches "
                    "login.microsoftonline.com"
                ) from None
            if shutil.which("az"):
                fix = "run `az login`"
            else:
                fix = (
                    "install the Azure CLI (https://learn.microsoft.com/cli/azure/install-azure-cli) and run `az login`"
                )
            raise SubmitError(
                f"not logged in to Azure (DefaultAzureCredential found no usable credential): {fix}, or set "
                "AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET for a service principal, or use another "
                "DefaultAzureCredential source (managed identity, azd auth login)"
            ) from None
    return MLClient(
        credential,
        settings["subscription_id"],
        settings["resource_group"],
        settings["workspace_name"],
        enable_telemetry=False,
        **client_kwargs,
    )


@contextlib.contextmanager
def _quiet(*names: str):
    """Hold these loggers (and their children) to CRITICAL for the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def check_target(ml_client, settings: dict) -> None:
    """The workspace and the compute exist, before anything is uploaded."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    workspace = settings["workspace_name"]
    try:
        ml_client.workspaces.get(workspace)
    except ResourceNotFoundError:
        raise SubmitError(
            f"workspace {workspace!r} not found in resource group {settings['resource_group']!r} of the configured "
            "subscription: check fine-tuning/azureml/config.json (or AZUREML_WORKSPACE_NAME)"
        ) from None
    except HttpResponseError as error:
        raise SubmitError(
            f"cannot read workspace {workspace!r} ({_first_line(error)}): check the ids in config.json and that "
            "your account has a role on the workspace (e.g. AzureML Data Scientist)"
        ) from None
    name = settings["compute"]
    try:
        compute = ml_client.compute.get(name)
    except ResourceNotFoundError:
        raise SubmitError(
            f"compute {name!r} not found in workspace {settings['workspace_name']!r}: create a GPU cluster "
            f"(az ml compute create --name {name} --type AmlCompute --size Standard_NC24ads_A100_v4 "
            "--min-instances 0 --max-instances 1) or set compute in config.json / AZUREML_COMPUTE"
        ) from None
    size = str(getattr(compute, "size", "") or "")
    if size and not size.lower().startswith("standard_n"):
        print(f"WARNING: compute {name!r} is a {size} VM, not a GPU size (Standard_N*); training will be slow")


def submit(ml_client, job, stream: bool = True):
    from azure.core.exceptions import HttpResponseError

    try:
        created = ml_client.jobs.create_or_update(job)
    except HttpResponseError as error:
        raise SubmitError(f"Azure ML refused the job: {_first_line(error)}") from None
    print(f"Submitted {created.name}: {created.studio_url}")
    if stream:
        from azure.ai.ml.exceptions import JobException

        try:
            ml_client.jobs.stream(created.name)
        except JobException as error:
            raise SubmitError(
                f"job {created.name} did not complete: {_first_line(error)}; see {created.studio_url}"
            ) from None
        print(
            f"Job {created.name} completed; fetch its models with: python fine-tuning/azureml/submit.py "
            f"--download {created.name}"
        )
    return created


def download(ml_client, job_name: str, gen_dir: Path = project.GEN_MODEL) -> list[Path]:
    from azure.ai.ml.exceptions import JobException
    from azure.core.exceptions import ResourceNotFoundError

    gen_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=gen_dir, prefix=".download-") as scratch:
        try:
            ml_client.jobs.download(job_name, download_path=scratch, output_name=OUTPUT_NAME)
        except ResourceNotFoundError:
            raise SubmitError(f"job {job_name!r} not found in this workspace; `az ml job list` lists them") from None
        except JobException as error:
            raise SubmitError(f"job {job_name!r} cannot be downloaded yet: {_first_line(error)}") from None
        return place_outputs(Path(scratch) / "named-outputs" / OUTPUT_NAME, gen_dir)


def place_outputs(downloaded: Path, gen_dir: Path) -> list[Path]:
    """Move a job's gen-model/ into this one, and point outputs.json at the local copies."""
    if not downloaded.is_dir() or not any(downloaded.iterdir()):
        raise SubmitError(f"the job's {OUTPUT_NAME} output is empty: the workflow made no model; read the job's logs")
    placed = []
    for item in sorted(downloaded.iterdir()):
        target = gen_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        shutil.move(str(item), target)
        placed.append(target)
    record = gen_dir / "outputs.json"
    if record.is_file():
        # run.py records paths relative to gen-model/, kept as they are; a path outside the project (absolute,
        # from the job node) is looked up at the same place under gen-model/ here
        paths = json.loads(record.read_text(encoding="utf-8"))
        local = {name: str(_local_path(path, gen_dir)) for name, path in paths.items()}
        record.write_text(json.dumps(local, indent=2), encoding="utf-8")
    return placed


def _local_path(job_path: str, gen_dir: Path) -> Path:
    parts = Path(job_path).parts
    if "gen-model" not in parts:
        return Path(job_path)
    last = len(parts) - 1 - parts[::-1].index("gen-model")
    return gen_dir.joinpath(*parts[last + 1 :])


def _is_secret(name: str) -> bool:
    """name: a path relative to the uploaded folder, with '/'."""
    parts = name.lower().split("/")
    if any(part in SECRET_FOLDERS for part in parts[:-1]):
        return True
    return any(fnmatch.fnmatchcase(parts[-1], pattern) for pattern in SECRET_FILES)


def _relative(path: Path) -> str | None:
    """path as the snapshot names it (relative, with /), or None outside the project."""
    try:
        return path.resolve().relative_to(project.ROOT).as_posix()
    except ValueError:
        return None


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "message", None) or error).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)


# ---------------------------------------------------------------- CLI


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--dry-run", action="store_true", help=f"validate locally and write {JOB_YAML.name}")
    action.add_argument("--download", metavar="JOB", help="put the finished job's gen-model/ into gen-model/")
    parser.add_argument(
        "--data",
        metavar="URI_OR_FOLDER",
        help="training data folder: azureml://datastores/<datastore>/paths/<folder>, a data asset "
        "azureml:<name>:<version>, or a local folder to upload (default: datasets/ in the code snapshot)",
    )
    parser.add_argument("--compute", help="compute cluster name (default: config.json, AZUREML_COMPUTE, gpu-cluster)")
    parser.add_argument("--config", type=Path, default=CONFIG_FILE, help="workspace config file")
    parser.add_argument("--output", type=Path, default=JOB_YAML, help="where --dry-run writes the job YAML")
    parser.add_argument("--no-stream", action="store_true", help="submit and return without streaming the logs")
    return parser.parse_args(argv)


def run(args, credential=None, **client_kwargs) -> int:
    if args.config != CONFIG_FILE and not args.config.is_file():  # the default file may be absent: env settings
        raise SubmitError(f"--config {args.config}: no such file; give the workspace config file's path")
    settings = load_settings(args.config, overrides={"compute": args.compute}, dry_run=args.dry_run)
    if args.download:
        require_workspace(settings, args.config)
        placed = download(connect(settings, credential, **client_kwargs), args.download)
        print("Downloaded into gen-model/: " + ", ".join(path.name for path in placed))
        return 0
    job = build_job(settings, args.data)
    validate(job)
    if args.dry_run:
        summary = snapshot_summary(args.config)
        path = write_yaml(job, args.output)
        print(f"Job valid for compute {settings['compute']!r}; wrote {path}")
        print(summary)
        unset = [key for key in WORKSPACE_KEYS if not settings.get(key)]
        if unset:
            print(f"Before submitting, set {', '.join(unset)} (step 3 of fine-tuning/azureml/README.md)")
        return 0
    require_workspace(settings, args.config)
    if not (project.ROOT / "model-cache" / "download.py").is_file():
        raise SubmitError("model-cache/download.py is missing: the job downloads the base model with it")
    summary = snapshot_summary(args.config)  # before signing in: a secret in the snapshot stops everything
    ml_client = connect(settings, credential, **client_kwargs)
    check_target(ml_client, settings)
    print(summary)
    submit(ml_client, job, stream=not args.no_stream)
    return 0


def main(argv=None, credential=None, **client_kwargs) -> int:
    args = parse_args(argv)
    # azure-ai-ml warns about its own experimental schema classes on import; nothing here uses them
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
    try:
        return run(args, credential, **client_kwargs)
    except (SubmitError, project.ConfigError) as error:
        # Azure's own messages name subscription, tenant and client ids: kept out of the output like the login's
        print(f"ERROR: {AZURE_ID.sub('<id>', str(error))}", file=sys.stderr)
        return 1
    except ImportError as error:
        print(
            f"ERROR: {error.name or error}: not installed; pip install -r fine-tuning/azureml/requirements.txt",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
