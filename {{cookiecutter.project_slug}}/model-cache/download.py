"""Download the base model into model-cache/, at the commit pinned in setup/project.json.

    python model-cache/download.py                    # the project's base model at its pinned commit
    python model-cache/download.py --revision main    # the newest commit instead (not reproducible)

Only the files the workflow reads are fetched (config, safetensors weights, tokenizer). The token comes from
HF_TOKEN or `hf auth login`, through huggingface_hub's own lookup; this script never reads, prints or writes
it. A re-run skips the files already complete, and with HF_HUB_OFFLINE=1 it only checks what is there.
"""

import argparse
import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "setup"))
import project  # noqa: E402

# What Olive's HfModel, transformers and ModelBuilder read. Phi-3 and Phi-3.5 ship a sentencepiece
# tokenizer.model, Phi-4-mini a BPE vocab.json + merges.txt; each pattern that a repo lacks matches nothing.
# Left out: the *.py of trust_remote_code (the models are native in transformers), other weight formats
# (*.bin, *.pt, *.gguf), docs and images. LICENSE is not read by anything, but it travels with the weights.
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "LICENSE",
]
# Top level only: fnmatch's "*" also matches "/", and subfolders (onnx/, gguf/, ...) hold other formats.
IGNORE_PATTERNS = ["*/*"]
# Kept free beyond the files themselves: a full disk breaks more than this download.
RESERVE_BYTES = 512 * 2**20

EXIT_OFFLINE, EXIT_AUTH, EXIT_REPO, EXIT_REVISION, EXIT_DISK, EXIT_PACKAGES = 3, 4, 5, 6, 7, 8
EXIT_INTERRUPTED = 130  # Ctrl-C; a SIGTERM exits 143

EPILOG = f"""\
exit codes: 0 done, 2 usage, {EXIT_OFFLINE} Hub unreachable (or HF_HUB_OFFLINE=1) and files missing,
  {EXIT_AUTH} not authorised (gated or private repo, missing or bad token), {EXIT_REPO} repository not found,
  {EXIT_REVISION} revision not found, {EXIT_DISK} not enough disk space, {EXIT_PACKAGES} huggingface_hub missing or not
  the major version setup/requirements.txt pins (or another package missing), {EXIT_INTERRUPTED} interrupted
  (143 terminated), 1 anything else

interrupted downloads: within one run, huggingface_hub retries a dropped connection a few times,
  resuming the file from the last 10 MiB it had written. A file still unfinished when the run ends
  (Ctrl-C, crash, network gone) is not resumed by the next run: huggingface_hub 2.x downloads into a
  temporary file unique to each run, so the next run starts that file again from zero. Finished files
  are kept and skipped; this script deletes the dead temporary files when it starts.

token: HF_TOKEN or `hf auth login`, only for a gated or private repo; it is never printed or written."""


class DownloadError(Exception):
    """A failure the user can act on: one line on stderr and its own exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# A private mirror's user and password ride in HF_ENDPOINT (scheme://user:pass@host), and huggingface_hub puts
# the full URL into its error texts; a token can ride in a query string. Up to the last "@" before the path,
# as URL parsers split it, so a raw "@" inside the password does not leave its tail behind.
_USERINFO = re.compile(r"(?<=://)[^/\s?#]*@")
_SECRET_PARAM = re.compile(
    r"(?i)([?&][^=&\s]*(?:token|password|passwd|secret|signature|sig|key|credential)[^=&\s]*=)[^&\s#'\"]+"
)
# a Hugging Face token is hf_ and 34 letters or digits; the floor spares names such as hf_hub or hf_xet
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")


def redact(text: str) -> str:
    """text without the credentials a URL in it may carry: what this script prints goes into logs."""
    text = _USERINFO.sub("***@", text)
    text = _SECRET_PARAM.sub(r"\1***", text)
    return _HF_TOKEN.sub("hf_***", text)


def report(level: str, text: str) -> None:
    """An ERROR or WARNING line: error texts and the endpoint end up here, so redact() runs here for all of them."""
    print(f"{level}: {redact(text)}", file=sys.stderr)


class _RedactLog:
    """A logging filter: huggingface_hub logs the URL of each request it retries ("Error while downloading from")."""

    def filter(self, record) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        return True


def redact_hub_log() -> None:
    import logging

    for handler in logging.getLogger("huggingface_hub").handlers + logging.getLogger().handlers:
        if not any(isinstance(f, _RedactLog) for f in handler.filters):
            handler.addFilter(_RedactLog())


def human(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def on_interrupt(signum, frame) -> None:
    # Ctrl-C would otherwise wait for every running file to finish: the download threads are not daemons.
    # os._exit skips every finally: the lock file goes here.
    for path in HELD_LOCKS:
        remove_lock_file(path)
    what = "interrupted" if signum == signal.SIGINT else "terminated"
    print(
        f"\nERROR: {what}: run the same command again; finished files are kept, an unfinished file starts "
        "again from zero",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(128 + signum)


def pinned_hub() -> str | None:
    """The huggingface_hub version setup/requirements.txt pins, or None where it says none."""
    try:
        return project.pins().get("huggingface-hub")
    except (OSError, UnicodeDecodeError):
        return None


def _major(version: str) -> int | None:
    match = re.match(r"\d+", version)
    return int(match.group()) if match else None


def check_hub_version() -> None:
    """Before anything imports huggingface_hub: another major version fails deep inside, with tracebacks."""
    pin = pinned_hub()
    try:
        installed = metadata.version("huggingface_hub") or "of an unknown version"
    except metadata.PackageNotFoundError:
        installed = None
    needs = f"this script needs the pinned {pin}" if pin else "this script needs the one setup/requirements.txt pins"
    if installed is None:
        raise DownloadError(EXIT_PACKAGES, f"huggingface_hub is not installed; {needs}: {project.PIP_INSTALL}")
    if pin and _major(installed) != _major(pin):
        raise DownloadError(EXIT_PACKAGES, f"huggingface_hub {installed} is installed; {needs}: {project.PIP_INSTALL}")


# the lock file this run holds: on_interrupt removes it before os._exit
HELD_LOCKS: list[Path] = []


def remove_lock_file(path: Path) -> None:
    """Delete the lock file while this run still holds its lock, so that no other run holds the deleted file.

    A run that opened the file just before and locks it just after holds nothing: filelock (4.x) and
    download_lock look for that and lock the new file. On Windows an open file cannot be deleted: filelock
    deletes it there when it releases.
    """
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def download_lock(local_dir: Path):
    """Hold a lock on local_dir for this run, then delete what interrupted runs left behind.

    huggingface_hub names each temporary file uniquely per run and never reuses one, so once no other
    download into local_dir is running (the lock), every *.incomplete there is dead weight. The lock file
    goes when the run ends, whichever way; it stays only while another run holds it.
    """
    from filelock import FileLock, Timeout

    path = local_dir.parent / f".{local_dir.name}.download.lock"
    try:  # filelock reports a lock file it cannot create as a lock someone else holds
        local_dir.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    except OSError as error:
        raise DownloadError(
            1,
            f"{local_dir.parent}: cannot write there ({error.strerror or error}); give --local-dir a folder you can "
            "write to, or fix that folder's permissions",
        ) from None
    for attempt in range(3):
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise DownloadError(1, f"another download into {local_dir} is running: wait for it to finish") from None
        if path.exists() or attempt == 2:
            break
        lock.release()  # the run before deleted the file between our open and our lock: lock the new one
    HELD_LOCKS.append(path)
    try:
        for partial in (local_dir / ".cache" / "huggingface" / "download").glob("*.incomplete"):
            partial.unlink(missing_ok=True)
        yield
    finally:
        remove_lock_file(path)
        HELD_LOCKS.remove(path)
        lock.release()


def wanted(paths) -> list[str]:
    from huggingface_hub.utils import filter_repo_objects

    return list(filter_repo_objects(paths, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))


def free_bytes(path: Path) -> int:
    while not path.exists():  # the folder is created by the download
        path = path.parent
    return shutil.disk_usage(path).free


def space_fix(local_dir: Path) -> str:
    """What to do when local_dir's disk is too small: the workflow reads the model from the project's model_dir."""
    try:
        model_dir = project.load()["model_dir"]
    except Exception:  # noqa: BLE001 - the message still helps without the project's facts
        model_dir = "model-cache/<org>/<model>"
    return (
        f"free some space there, or download onto a larger disk with --local-dir /larger/disk/{local_dir.name} and "
        f"then replace {model_dir} with a symbolic link to that folder (fine-tuning/olive-config.json reads the "
        "model there; or set its input_model.model_path to the new folder)"
    )


def preflight(repo: str, revision: str, local_dir: Path) -> str:
    """Resolve the revision to a commit, list the wanted files and check they fit; return the commit."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    files = wanted(sizes)
    # a file already there with the right size is almost surely current (the download checks): no space for it
    missing = [name for name in files if not _complete(local_dir / name, sizes[name])]
    needed = sum(sizes[name] for name in missing)
    free = free_bytes(local_dir)
    if needed + RESERVE_BYTES > free:
        raise DownloadError(
            EXIT_DISK,
            f"not enough disk space in {local_dir}: {human(needed)} to download (+{human(RESERVE_BYTES)} kept free), "
            f"{human(free)} free: {space_fix(local_dir)}",
        )
    todo = f"{human(needed)} to download" if missing else "nothing to download"
    print(f"{repo} at {info.sha}: {len(files)} files, {todo} into {local_dir}")
    return info.sha


def _complete(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def check_files(local_dir: Path) -> list[str]:
    """What the workflow needs that is not in local_dir (what snapshot_download cannot vouch for offline)."""
    missing = [name for name in ("config.json", "tokenizer_config.json") if not (local_dir / name).is_file()]
    if project.tokenizer_missing(local_dir):
        missing.append("tokenizer.json")
    index = local_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        missing += sorted(name for name in shards if not (local_dir / name).is_file())
    elif not any(local_dir.glob("*.safetensors")):
        missing.append("*.safetensors")
    return missing


def download(repo: str, revision: str, local_dir: Path) -> str | None:
    """Download (or, offline, check) the files; return the commit they are, None where that is unknown."""
    from huggingface_hub import is_offline_mode, snapshot_download

    redact_hub_log()
    local_only = is_offline_mode()
    commit = None
    if not local_only:
        try:
            revision = commit = preflight(repo, revision, local_dir)
        except DownloadError:
            raise
        except Exception as error:
            if classify(error, repo, revision, local_dir)[0] != EXIT_OFFLINE:
                raise
            # no Hub: the files already here may still be complete, which check_files judges below
            report("WARNING", f"cannot reach the Hub ({_first_line(error)}); checking {local_dir}")
            local_only = True
    if local_only:
        check_local_commit(local_dir, revision)
    snapshot_download(
        repo_id=repo,
        revision=revision,
        local_dir=local_dir,
        allow_patterns=ALLOW_PATTERNS,
        ignore_patterns=IGNORE_PATTERNS,
        local_files_only=local_only,
    )
    missing = check_files(local_dir)
    if missing:
        if local_only:
            raise DownloadError(EXIT_OFFLINE, _offline_message(local_dir, ", ".join(missing[:3])))
        raise DownloadError(1, f"{repo} at {revision} has no {', '.join(missing[:3])}: is it a transformers model?")
    return commit or local_commit(local_dir)


def local_commit(local_dir: Path) -> str | None:
    """The commit huggingface_hub recorded for config.json when it downloaded it, or None."""
    if not (local_dir / "config.json").is_file():
        return None
    try:  # huggingface_hub's record of each file's commit; private, so a change of it skips what needs it
        from huggingface_hub._local_folder import read_download_metadata

        record = read_download_metadata(local_dir, "config.json")
    except Exception:  # noqa: BLE001
        return None
    return getattr(record, "commit_hash", None)


def check_local_commit(local_dir: Path, revision: str) -> None:
    """Offline, snapshot_download returns any non-empty local_dir: refuse files of another commit than the pin."""
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        return  # a branch or tag means a commit only the Hub knows
    commit = local_commit(local_dir)
    if commit is not None and commit != revision:
        raise DownloadError(
            EXIT_OFFLINE,
            f"{local_dir} holds commit {commit}, not {revision}, and the Hub cannot be reached: "
            "go online (unset HF_HUB_OFFLINE) and run again",
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _offline_message(local_dir: Path, missing: str) -> str:
    from huggingface_hub import is_offline_mode

    if is_offline_mode():
        return f"HF_HUB_OFFLINE=1 and {local_dir} lacks {missing}: unset HF_HUB_OFFLINE and run again"
    return (
        f"cannot reach the Hub and {local_dir} lacks {missing}: check the network (or HF_ENDPOINT, HTTPS_PROXY) "
        "and run again"
    )


def transport_errors() -> tuple[type, ...]:
    """The connection errors of huggingface_hub's HTTP client: httpx2 in 2.x, httpx in 1.x.

    Only a client already imported counts (an error of it means it is loaded): nothing is imported here.
    """
    found = (getattr(sys.modules.get(name), "TransportError", None) for name in ("httpx2", "httpx"))
    return tuple(error for error in found if isinstance(error, type))


def classify(error: BaseException, repo: str, revision: str, local_dir: Path) -> tuple[int, str]:
    """The exit code and the one-line message for an error of the download, or (0, "") if it is a bug."""
    if isinstance(error, ImportError):  # a dependency of huggingface_hub missing
        return EXIT_PACKAGES, f"{_first_line(error)}: {project.PIP_INSTALL}"
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    page = f"{constants.ENDPOINT}/{repo}"
    if isinstance(error, RevisionNotFoundError):
        return EXIT_REVISION, f"revision {revision} not found in {repo}: pass --revision main or another commit"
    if isinstance(error, GatedRepoError) or (
        isinstance(error, HfHubHTTPError)
        and not isinstance(error, RepositoryNotFoundError)
        and error.response is not None
        and error.response.status_code in (401, 403)
    ):
        return EXIT_AUTH, (
            f"not authorised to download {repo} (gated, or the token is missing or invalid): accept the licence on "
            f"{page} with your account, then set HF_TOKEN or run `hf auth login`"
        )
    if isinstance(error, RepositoryNotFoundError):
        return EXIT_REPO, (
            f"repository {repo} not found on {constants.ENDPOINT}: check the id (or, for a private repo, set "
            "HF_TOKEN or run `hf auth login`)"
        )
    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return EXIT_OFFLINE, _offline_message(local_dir, "the model files")
    if isinstance(error, transport_errors()):
        return EXIT_OFFLINE, (
            f"no connection to {constants.ENDPOINT} ({_first_line(error)}): check the network (or HF_ENDPOINT, "
            "HTTPS_PROXY) and run again; finished files are kept"
        )
    if isinstance(error, HfHubHTTPError):
        return EXIT_OFFLINE, f"the Hub answered: {_first_line(error)}: try again later"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return EXIT_DISK, f"disk full while writing to {local_dir}: {space_fix(local_dir)}"
    if isinstance(error, OSError):
        return 1, f"{_first_line(error)}: run again; if it persists, delete {local_dir} and run again"
    return 0, ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--revision", help="branch, tag or commit (default: the commit pinned in setup/project.json)")
    parser.add_argument("--repo", help="download another repo, e.g. a fork (default: the project's base model)")
    parser.add_argument("--local-dir", type=Path, help="where the files go (default: the project's model_dir)")
    args = parser.parse_args(argv)

    try:
        check_hub_version()
    except DownloadError as error:
        report("ERROR", str(error))
        return error.code
    facts = project.load()
    repo = args.repo or facts["base_model"]
    # the pinned commit belongs to the base model's repo; another repo has other commits
    revision = args.revision or (facts.get("revision") if repo == facts["base_model"] else None)
    unpinned = not revision
    if unpinned:
        report("WARNING", f"no revision pinned for {repo}: downloading the current main branch, unpinned")
        revision = "main"
    model_dir = (project.ROOT / facts["model_dir"]).resolve()
    local_dir = (args.local_dir or model_dir).resolve()

    signal.signal(signal.SIGINT, on_interrupt)
    signal.signal(signal.SIGTERM, on_interrupt)
    try:
        with download_lock(local_dir):
            commit = download(repo, revision, local_dir)
    except DownloadError as error:
        report("ERROR", str(error))
        return error.code
    except Exception as error:
        code, message = classify(error, repo, revision, local_dir)
        if not code:
            raise
        report("ERROR", message)
        return code

    print(f"Model ready: {local_dir}")
    if unpinned:
        print(pin_hint(repo, facts["base_model"], commit))
    if local_dir != model_dir:
        print(
            f"Not in {facts['model_dir']}, where fine-tuning/olive-config.json reads the model: replace "
            f"{facts['model_dir']} with a symbolic link to {local_dir}, or set input_model.model_path there to it"
        )
    print("Next: python fine-tuning/check_config.py")
    return 0


def pin_hint(repo: str, base_model: str, commit: str | None) -> str:
    """How to get the same files again, after an unpinned download."""
    if commit is None:
        return f"Unpinned: which commit of {repo} these files are is unknown here; run this online to learn it"
    if repo == base_model:
        where = 'set "revision": "' + commit + '" in setup/project.json'
    else:  # the pin in project.json is the base model's
        where = f"pass --revision {commit}"
    return f"Unpinned: these files are {repo} at commit {commit}; to download exactly them again, {where}"


if __name__ == "__main__":
    sys.exit(main())
