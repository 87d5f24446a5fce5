"""Runs inside the Azure ML job, before fine-tuning/run.py: put the data and the base model where it looks.

    python fine-tuning/azureml/job_steps.py prepare [--data <mounted folder>]

- --data: copies the job's data input into datasets/, where fine-tuning/olive-config.json reads it (the
  folder holds the files datasets/prepare.py makes, e.g. train.jsonl and eval.jsonl).
- The base model: `python model-cache/download.py`, as on a workstation. When HF_TOKEN_KEY_VAULT and
  HF_TOKEN_SECRET_NAME are set (names, never the token), the token is read from that Key Vault with the
  cluster's managed identity and handed to the download alone, through its environment; it is never printed,
  written to a file or passed to the training run.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "setup"))
import project  # noqa: E402

VAULT_SCOPE = "https://vault.azure.net/.default"
VAULT_API = "7.4"


class StepError(RuntimeError):
    """An expected failure; the message says what to do."""


def stage_data(source: Path, datasets: Path = project.ROOT / "datasets") -> list[str]:
    if not source.is_dir():
        raise StepError(f"--data {source}: the job's data input is not a folder; pass a folder to submit.py --data")
    copied = []
    for item in sorted(source.rglob("*")):
        if item.is_file():
            target = datasets / item.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item, target)
            copied.append(str(target.relative_to(project.ROOT)))
    if not copied:
        raise StepError(f"--data {source}: the data input is empty; upload your data files to that folder")
    missing = [name for name in project.data_files() if not (project.ROOT / name).is_file()]
    if missing:
        raise StepError(
            f"--data: the data input has no {', '.join(Path(name).name for name in missing)}, which "
            "fine-tuning/olive-config.json reads; make them with datasets/prepare.py and upload them to that folder"
        )
    return copied


def read_secret(vault: str, name: str, credential=None, urlopen=urllib.request.urlopen) -> str:
    """The secret's value, read with the compute's managed identity (Key Vault REST API, no SDK needed)."""
    if credential is None:
        from azure.identity import ManagedIdentityCredential

        # Azure ML sets DEFAULT_IDENTITY_CLIENT_ID when the cluster has a user-assigned identity
        credential = ManagedIdentityCredential(client_id=os.environ.get("DEFAULT_IDENTITY_CLIENT_ID") or None)
    hint = (
        "give the compute cluster a managed identity with the 'Key Vault Secrets User' role on the vault, "
        "and check the vault and secret names in fine-tuning/azureml/config.json"
    )
    try:
        token = credential.get_token(VAULT_SCOPE).token
    except Exception as error:  # noqa: BLE001 - any credential failure means the same fix
        raise StepError(f"Key Vault {vault}: no managed identity token ({type(error).__name__}); {hint}") from None
    # a vault name means the public cloud; other clouds give the vault's URL
    base = vault.rstrip("/") if "://" in vault else f"https://{urllib.parse.quote(vault)}.vault.azure.net"
    url = f"{base}/secrets/{urllib.parse.quote(name)}?api-version={VAULT_API}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urlopen(request, timeout=30) as response:
            return json.loads(response.read().decode("utf-8"))["value"]
    except urllib.error.HTTPError as error:
        raise StepError(f"Key Vault {vault}: reading secret {name!r} failed (HTTP {error.code}); {hint}") from None
    except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
        raise StepError(f"Key Vault {vault}: reading secret {name!r} failed ({type(error).__name__}); {hint}") from None


def download_env(environ=os.environ, secret_reader=read_secret) -> dict:
    env = dict(environ)
    vault, name = environ.get("HF_TOKEN_KEY_VAULT"), environ.get("HF_TOKEN_SECRET_NAME")
    if vault and name:
        env["HF_TOKEN"] = secret_reader(vault, name)
        print(f"HF token: read from Key Vault {vault} (secret {name})")
    return env


def fetch_model(environ=os.environ, secret_reader=read_secret) -> None:
    model_dir = project.ROOT / project.load()["model_dir"]
    if (model_dir / "config.json").is_file():
        print(f"base model: {model_dir} is already there")
        return
    command = [sys.executable, str(project.ROOT / "model-cache" / "download.py")]
    result = subprocess.run(command, cwd=project.ROOT, env=download_env(environ, secret_reader), check=False)
    if result.returncode != 0:
        raise StepError(f"model-cache/download.py failed (exit {result.returncode}); its output above says why")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["prepare"])
    parser.add_argument("--data", type=Path, help="the job's data input folder")
    args = parser.parse_args(argv)
    try:
        if args.data:
            copied = stage_data(args.data)
            print(f"data: {len(copied)} file(s) from the data input into datasets/")
        fetch_model()
    except StepError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
