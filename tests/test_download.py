"""model-cache/download.py of a generated project, with the real huggingface_hub against a local fake Hub.

Every run is a subprocess of the real script (huggingface_hub reads HF_ENDPOINT when it is imported) pointed
at tests/hub_server.py on 127.0.0.1, with its own empty HF_HOME and a socket guard that refuses any address
but the loopback: nothing here touches the internet or the user's token.
"""

import base64
import hashlib
import importlib.metadata
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import CONTEXT, bake, closed_endpoint, guarded, run_cli
from hub_server import HubServer

OLD = hashlib.sha1(b"old commit").hexdigest()  # the pinned commit
MAIN = hashlib.sha1(b"main commit").hexdigest()  # newer, where main points
TOKEN = "hf_TestTokenThatMustNeverBeWrittenAnywhere42"
SHARD = "model-00001-of-00002.safetensors"
WANTED = {
    "config.json",
    "generation_config.json",
    SHARD,
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "LICENSE",
}
UNWANTED = {
    ".gitattributes",
    "README.md",
    "configuration_phi3.py",
    "modeling_phi3.py",
    "sample_finetune.py",
    "pytorch_model.bin",
    "onnx/model.onnx",
    "onnx/model.safetensors",
    "images/banner.png",
}


def model_files(version: str) -> dict[str, bytes]:
    rng = random.Random(version)
    config = {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "version": version}
    index = {"metadata": {}, "weight_map": {"a.weight": SHARD, "b.weight": "model-00002-of-00002.safetensors"}}
    files = {name: f"{name} {version}\n".encode() for name in WANTED | UNWANTED}
    files.update(
        {
            "config.json": json.dumps(config).encode(),
            "model.safetensors.index.json": json.dumps(index).encode(),
            SHARD: rng.randbytes(192 * 1024),
            "model-00002-of-00002.safetensors": rng.randbytes(64 * 1024),
            "tokenizer.model": rng.randbytes(16 * 1024),
            "pytorch_model.bin": rng.randbytes(32 * 1024),
        }
    )
    return files


FILES = {OLD: model_files("old"), MAIN: model_files("main")}
# huggingface_hub writes what it receives in 10 MiB chunks: only a larger file shows a resume at a byte offset
CHUNK = 10 * 2**20
BIG = {**FILES[OLD], SHARD: random.Random("big").randbytes(2 * CHUNK + 4096)}
HUB_PIN = CONTEXT["_pins"]["huggingface_hub"]
PIP_INSTALL = "python -m pip install -r setup/requirements.txt"


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    return bake(tmp_path_factory.mktemp("bake"))


@pytest.fixture
def proj(baked, tmp_path):
    return Path(shutil.copytree(baked, tmp_path / baked.name))


def facts(proj: Path) -> dict:
    return json.loads((proj / "setup" / "project.json").read_text(encoding="utf-8"))


def set_revision(proj: Path, revision: str | None) -> None:
    data = facts(proj)
    data["revision"] = revision
    (proj / "setup" / "project.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def model_dir(proj: Path) -> Path:
    return proj / facts(proj)["model_dir"]


def lock_file(proj: Path) -> Path:
    target = model_dir(proj)
    return target.parent / f".{target.name}.download.lock"


def model_files_on_disk(proj: Path) -> dict[str, bytes]:
    root = model_dir(proj)
    if not root.is_dir():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def make_hub(proj: Path, old: dict[str, bytes] = FILES[OLD], **repo_options) -> HubServer:
    """A hub holding the project's base model at OLD and MAIN (main), and at the project's own pin if any."""
    hub = HubServer()
    repo = facts(proj)["base_model"]
    hub.add_repo(repo, OLD, old, branch=None, **repo_options)
    hub.add_repo(repo, MAIN, FILES[MAIN], **repo_options)
    pinned = facts(proj).get("revision")
    if pinned and pinned not in (OLD, MAIN):
        hub.add_repo(repo, pinned, old, branch=None, **repo_options)
    return hub


@pytest.fixture
def hub(proj):
    with make_hub(proj) as server:
        yield server


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """Run `python model-cache/download.py ARGS` in a project against a hub, in a clean offline-only env."""
    for name in list(os.environ):
        if name.startswith(("HF_", "HUGGING_FACE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHONPATH", guarded(dict(os.environ))["PYTHONPATH"])
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")

    def call(proj: Path, *args: str, endpoint: str, env: dict[str, str] | None = None, popen: bool = False):
        with monkeypatch.context() as m:
            m.setenv("HF_ENDPOINT", endpoint)
            for key, value in (env or {}).items():
                m.setenv(key, value)
            command = [sys.executable, "model-cache/download.py", *args]
            if popen:
                return subprocess.Popen(command, cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            return run_cli(command, cwd=proj, timeout=120)

    return call


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("ERROR")]


def assert_fails(result, code: int, *words: str) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    errors = error_lines(result)
    assert len(errors) == 1, result.stderr
    assert errors[0] == result.stderr.strip().splitlines()[-1], "the error is the last line"
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def assert_model(proj: Path, commit: str, files: dict[str, bytes] | None = None) -> None:
    assert model_files_on_disk(proj) == {name: (files or FILES[commit])[name] for name in WANTED}


@pytest.fixture
def big_hub(proj):
    with make_hub(proj, old=BIG) as server:
        yield server


def test_pinned_download_fetches_only_the_pipeline_files(proj, hub, cli):
    result = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert_model(proj, OLD)  # the pinned commit, not main; byte-identical; no *.bin, onnx/, code, docs
    assert {r.file for r in hub.gets()} == WANTED
    assert "WARNING" not in result.stderr
    assert f"Model ready: {model_dir(proj).resolve()}" in result.stdout
    assert "Next: python fine-tuning/check_config.py" in result.stdout
    assert OLD in result.stdout
    assert not lock_file(proj).exists()


def test_rerun_downloads_nothing_again(proj, hub, cli):
    assert cli(proj, "--revision", OLD, endpoint=hub.endpoint).returncode == 0
    fetched = len(hub.gets())
    result = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert len(hub.gets()) == fetched
    assert "nothing to download" in result.stdout
    assert_model(proj, OLD)


def test_default_revision_is_the_projects_pin(proj, hub, cli):
    set_revision(proj, OLD)
    result = cli(proj, endpoint=hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    assert_model(proj, OLD)


def test_unpinned_project_downloads_main_with_a_warning(proj, hub, cli):
    set_revision(proj, None)
    result = cli(proj, endpoint=hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert f"WARNING: no revision pinned for {facts(proj)['base_model']}: downloading the current main branch" in (
        result.stderr
    )
    assert f'set "revision": "{MAIN}" in setup/project.json' in result.stdout  # the commit to pin
    assert_model(proj, MAIN)


def test_unpinned_messages_promise_nothing_they_do_not_print(proj, cli):
    """The commit to pin is printed where it is known; no message points at one that never comes."""
    set_revision(proj, None)
    with make_hub(proj) as hub:
        offline_empty = cli(proj, endpoint=hub.endpoint, env={"HF_HUB_OFFLINE": "1"})
        online = cli(proj, endpoint=hub.endpoint)
        offline = cli(proj, endpoint=hub.endpoint, env={"HF_HUB_OFFLINE": "1"})
        other = cli(proj, "--repo", facts(proj)["base_model"] + "-fork", endpoint=hub.endpoint)
        endpoint = hub.endpoint
    hub_down = cli(proj, endpoint=endpoint)
    assert_fails(offline_empty, 3, "HF_HUB_OFFLINE")
    assert online.returncode == offline.returncode == hub_down.returncode == 0, online.stderr + offline.stderr
    assert f"these files are {facts(proj)['base_model']} at commit {MAIN}" in online.stdout
    assert f'set "revision": "{MAIN}" in setup/project.json' in online.stdout
    for result in (offline, hub_down):  # no Hub: the commit comes from huggingface_hub's record of the download
        assert f'set "revision": "{MAIN}" in setup/project.json' in result.stdout, result.stdout + result.stderr
    assert_fails(other, 5, "-fork")
    for result in (offline_empty, online, offline, other, hub_down):
        assert "unpinned" in result.stderr
        assert "below" not in result.stdout + result.stderr, result.stderr


def test_generated_project_as_is(proj, hub, cli):
    """Whatever the template's table pins (a commit, or nothing yet), the generated default command works."""
    pinned = facts(proj).get("revision")
    result = cli(proj, endpoint=hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert ("unpinned" in result.stderr) == (not pinned)
    assert (pinned or MAIN) in result.stdout


def test_gated_repo_needs_the_token_which_is_never_written(proj, cli, tmp_path):
    with make_hub(proj, gated=True, tokens={TOKEN}) as hub:
        denied = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
        assert_fails(denied, 4, "accept the licence", "HF_TOKEN", "hf auth login")
        assert not hub.gets()

        bad = cli(proj, "--revision", OLD, endpoint=hub.endpoint, env={"HF_TOKEN": "hf_not_a_valid_token"})
        assert_fails(bad, 4)

        before = len(hub.requests)
        allowed = cli(proj, "--revision", OLD, endpoint=hub.endpoint, env={"HF_TOKEN": TOKEN})
        assert allowed.returncode == 0, allowed.stderr
        assert_model(proj, OLD)
        hub_calls = [r for r in hub.requests[before:] if r.server == "hub"]
        assert hub_calls and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub_calls)
        cdn_calls = [r for r in hub.requests[before:] if r.server == "cdn"]
        assert cdn_calls and not any("authorization" in r.headers for r in cdn_calls), "token sent off the Hub"

    assert TOKEN not in allowed.stdout + allowed.stderr
    for root in (proj, tmp_path / "hf-home"):
        for path in root.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path


def test_unknown_repo(proj, hub, cli):
    result = cli(proj, "--repo", "microsoft/no-such-model", endpoint=hub.endpoint)
    assert_fails(result, 5, "microsoft/no-such-model", "not found")


def test_unknown_revision(proj, hub, cli):
    unknown = hashlib.sha1(b"never committed").hexdigest()
    result = cli(proj, "--revision", unknown, endpoint=hub.endpoint)
    assert_fails(result, 6, unknown, "--revision main")
    assert not model_files_on_disk(proj)
    assert not lock_file(proj).exists()


def test_connection_cut_mid_file_is_retried_within_the_run(proj, big_hub, cli):
    big_hub.cut(SHARD)  # 10.0 MiB of 20.0 arrive, then the connection drops
    big_hub.cut("tokenizer.model")  # 8 KiB of 16
    result = cli(proj, "--revision", OLD, endpoint=big_hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert_model(proj, OLD, BIG)
    assert "Trying to resume download" in result.stderr
    first, second = big_hub.gets(SHARD)
    assert "range" not in first.headers
    assert second.headers["range"] == f"bytes={CHUNK}-", "resumed from the last whole chunk it had written"
    first, second = big_hub.gets("tokenizer.model")
    assert "range" not in second.headers, "less than a chunk arrived: the retry starts from zero"


def test_connection_lost_for_good_then_rerun_completes(proj, hub, cli):
    hub.cut(SHARD, times=100, keep=0)  # headers, then nothing: huggingface_hub gives up after 5 retries
    failed = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
    assert_fails(failed, 3, "run again")
    assert SHARD not in model_files_on_disk(proj)
    assert "config.json" in model_files_on_disk(proj), "the other files finished"

    hub.cut(SHARD, times=0)
    before = {name: len(hub.gets(name)) for name in WANTED}
    result = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert_model(proj, OLD)
    again = {name for name in WANTED if len(hub.gets(name)) > before[name]}
    assert again == {SHARD}, "finished files are not downloaded again"


def test_interrupted_run_restarts_the_file_from_zero(proj, big_hub, cli):
    big_hub.stall(SHARD)  # half the file, then the server waits
    process = cli(proj, "--revision", OLD, endpoint=big_hub.endpoint, popen=True)
    try:
        assert big_hub.stalled.wait(timeout=60), "the download never reached the stalled file"
        partials = model_dir(proj) / ".cache" / "huggingface" / "download"
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size >= CHUNK for p in partials.glob("*.incomplete")):
            assert time.monotonic() < deadline, "the first 10 MiB never reached the disk"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("ERROR: interrupted: run the same command again")
    assert SHARD not in model_files_on_disk(proj)
    assert not lock_file(proj).exists()

    big_hub.release()
    result = cli(proj, "--revision", OLD, endpoint=big_hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert_model(proj, OLD, BIG)
    assert "range" not in big_hub.gets(SHARD)[-1].headers, "huggingface_hub 2.x does not resume across runs"
    assert not list(model_dir(proj).rglob("*.incomplete")), "the dead partial files are removed"


def test_hub_not_running(proj, cli):
    closed = closed_endpoint()
    started = time.monotonic()
    result = cli(proj, "--revision", OLD, endpoint=closed)
    assert_fails(result, 3, "cannot reach the Hub")
    assert time.monotonic() - started < 30


def test_hub_down_with_complete_files_succeeds(proj, cli):
    with make_hub(proj) as hub:
        assert cli(proj, "--revision", OLD, endpoint=hub.endpoint).returncode == 0
        endpoint = hub.endpoint
    result = cli(proj, "--revision", OLD, endpoint=endpoint)
    assert result.returncode == 0, result.stderr
    assert "cannot reach the Hub" in result.stderr
    assert_model(proj, OLD)


MIRROR_PASSWORD = "hf_MirrorPasswordThatMustNeverBePrinted7"


def with_credentials(endpoint: str) -> str:
    """The endpoint of a private mirror that takes a user and password in the URL."""
    return endpoint.replace("://", f"://mirror:{MIRROR_PASSWORD}@", 1)


class _ServerError(BaseHTTPRequestHandler):
    """A hub that answers 500 to everything: huggingface_hub puts the full URL in that error's text."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        payload = b'{"error": "Internal Error"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_HEAD = do_GET


def assert_no_credentials(result) -> None:
    output = result.stdout + result.stderr
    assert MIRROR_PASSWORD not in output, output
    assert "mirror:" not in output, output


def test_credentials_in_hf_endpoint_are_never_printed(proj, hub, cli):
    host = hub.endpoint.removeprefix("http://")
    endpoint = with_credentials(hub.endpoint)
    # the client sends the URL's user and password as Basic auth, which this hub does not know yet: 401
    refused = cli(proj, "--repo", "microsoft/no-such-model", endpoint=endpoint)
    assert_fails(refused, 4, f"http://***@{host}/microsoft/no-such-model")
    assert_no_credentials(refused)

    # a mirror that accepts them, as a private one would
    hub.tokens.add("Basic " + base64.b64encode(f"mirror:{MIRROR_PASSWORD}".encode()).decode())
    not_found = cli(proj, "--repo", "microsoft/no-such-model", endpoint=endpoint)
    assert_fails(not_found, 5, "microsoft/no-such-model", "not found", f"http://***@{host}:")
    assert_no_credentials(not_found)

    server = ThreadingHTTPServer(("127.0.0.1", 0), _ServerError)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        failing = f"http://127.0.0.1:{server.server_address[1]}"
        broken = cli(proj, "--revision", OLD, endpoint=with_credentials(failing))
    finally:
        server.shutdown()
        server.server_close()
    assert_fails(broken, 3, "cannot reach the Hub")
    warning = next(line for line in broken.stderr.splitlines() if line.startswith("WARNING: cannot reach the Hub"))
    assert "500" in warning and f"http://***@{failing.removeprefix('http://')}/api/models/" in warning, warning
    assert_no_credentials(broken)

    closed = closed_endpoint()
    down = cli(proj, "--revision", OLD, endpoint=with_credentials(closed))
    assert_fails(down, 3, "cannot reach the Hub")
    assert_no_credentials(down)

    # huggingface_hub logs the URL of a file whose connection dropped before it retries
    hub.cut("tokenizer.json")
    done = cli(proj, "--revision", OLD, endpoint=endpoint)
    assert done.returncode == 0, done.stderr
    assert_model(proj, OLD)
    assert "Trying to resume download" in done.stderr and f"http://***@{host}/" in done.stderr, done.stderr
    assert_no_credentials(done)


def test_offline_mode(proj, hub, cli):
    missing = cli(proj, "--revision", OLD, endpoint=hub.endpoint, env={"HF_HUB_OFFLINE": "1"})
    assert_fails(missing, 3, "HF_HUB_OFFLINE")
    assert not hub.requests

    assert cli(proj, "--revision", OLD, endpoint=hub.endpoint).returncode == 0
    seen = len(hub.requests)
    started = time.monotonic()
    present = cli(proj, "--revision", OLD, endpoint=hub.endpoint, env={"HF_HUB_OFFLINE": "1"})
    assert present.returncode == 0, present.stderr
    assert len(hub.requests) == seen, "offline mode made a request"
    assert time.monotonic() - started < 20
    assert_model(proj, OLD)

    other = cli(proj, "--revision", MAIN, endpoint=hub.endpoint, env={"HF_HUB_OFFLINE": "1"})
    assert_fails(other, 3, f"holds commit {OLD}, not {MAIN}")


def test_a_repo_without_the_tokenizer_vocabulary_is_refused(proj, cli):
    """tokenizer_config.json alone makes a tokenizer with an empty vocabulary (prepare.py counted 0 tokens)."""
    without = {name: data for name, data in FILES[OLD].items() if name not in ("tokenizer.json", "tokenizer.model")}
    with make_hub(proj, old=without) as hub:
        result = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
    assert_fails(result, 1, f"at {OLD} has no tokenizer.json: is it a transformers model?")


def assert_space_fix(error: str, proj: Path) -> None:
    """The way out keeps the model where fine-tuning/olive-config.json reads it."""
    config = json.loads((proj / "fine-tuning" / "olive-config.json").read_text(encoding="utf-8"))
    where = config["input_model"]["model_path"]
    assert where == facts(proj)["model_dir"]
    name = Path(where).name
    assert error.endswith(
        f"free some space there, or download onto a larger disk with --local-dir /larger/disk/{name} and then "
        f"replace {where} with a symbolic link to that folder (fine-tuning/olive-config.json reads the model "
        "there; or set its input_model.model_path to the new folder)"
    ), error


def test_not_enough_disk_space_is_refused_before_downloading(proj, hub, cli):
    hub.declare_size(facts(proj)["base_model"], SHARD, 10**18)
    result = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
    assert_space_fix(assert_fails(result, 7, "not enough disk space"), proj)
    assert not hub.gets()
    assert not model_files_on_disk(proj)
    assert not lock_file(proj).exists()


def test_download_elsewhere_then_link_it_as_the_disk_message_says(proj, hub, cli, tmp_path):
    larger = tmp_path / "larger-disk" / model_dir(proj).name
    result = cli(proj, "--revision", OLD, "--local-dir", str(larger), endpoint=hub.endpoint)
    assert result.returncode == 0, result.stderr
    assert f"Model ready: {larger}" in result.stdout
    where = facts(proj)["model_dir"]
    assert f"replace {where} with a symbolic link to {larger}" in result.stdout
    assert not (larger.parent / f".{larger.name}.download.lock").exists()
    model_dir(proj).parent.mkdir(parents=True, exist_ok=True)
    try:
        model_dir(proj).symlink_to(larger, target_is_directory=True)
    except OSError as error:
        if os.name != "nt":
            raise
        pytest.skip(f"no symbolic links without the privilege: {error}")
    fetched = len(hub.gets())
    again = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
    assert again.returncode == 0, again.stderr
    assert "nothing to download" in again.stdout and len(hub.gets()) == fetched
    assert "symbolic link" not in again.stdout
    assert_model(proj, OLD)  # read through the link, where olive-config.json looks


def test_disk_full_during_the_download(proj, hub, cli):
    # ENOSPC cannot be provoked on a real disk here: the write path of huggingface_hub raises it instead
    script = (
        "import errno, runpy, sys\n"
        "import huggingface_hub.file_download as fd\n"
        "def full(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "fd.http_get = full\n"
        "sys.argv = ['model-cache/download.py', '--revision', sys.argv[1]]\n"
        "runpy.run_path('model-cache/download.py', run_name='__main__')\n"
    )
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HF_ENDPOINT", hub.endpoint)
        result = run_cli([sys.executable, "-c", script, OLD], cwd=proj, timeout=120)
    assert_space_fix(assert_fails(result, 7, "disk full"), proj)
    assert not lock_file(proj).exists()


def test_second_download_into_the_same_folder_is_refused(proj, hub, cli):
    from filelock import FileLock

    target = model_dir(proj)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_file(proj))):
        result = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
        assert lock_file(proj).exists(), "another run's lock file is not this run's to delete"
    assert_fails(result, 1, "another download")
    assert not hub.requests


def test_a_folder_that_cannot_be_written_is_named_not_taken_for_a_lock(proj, hub, cli):
    result = cli(proj, "--revision", OLD, "--local-dir", "/proc/phi3-e2e-model", endpoint=hub.endpoint)
    assert_fails(result, 1, "/proc: cannot write there", "--local-dir")
    assert "another download" not in result.stderr
    assert not hub.requests


def test_lock_file_goes_on_failure_and_on_sigterm(proj, hub, cli):
    hub.cut(SHARD, times=100, keep=0)
    failed = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
    assert_fails(failed, 3)
    assert not lock_file(proj).exists()

    hub.cut(SHARD, times=0)
    hub.stall(SHARD)
    process = cli(proj, "--revision", OLD, endpoint=hub.endpoint, popen=True)
    try:
        assert hub.stalled.wait(timeout=60), "the download never reached the stalled file"
        assert lock_file(proj).exists(), "held while the download runs"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
        hub.release()
    assert process.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("ERROR: terminated: run the same command again")
    assert not lock_file(proj).exists()


def test_help_documents_exit_codes_and_restarts(proj, cli):
    result = cli(proj, "--help", endpoint="http://127.0.0.1:9")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "starts that file again from zero" in text
    assert "3 Hub unreachable" in text and "7 not enough disk space" in text and "130 interrupted" in text
    assert "8 huggingface_hub missing or not the major version setup/requirements.txt pins" in text


def test_huggingface_hub_of_another_major_version_is_one_line(proj, hub, cli, tmp_path):
    """An old huggingface_hub (its record says 0.26.2) is refused before any import of it."""
    fake = tmp_path / "old-hub"
    info = fake / "huggingface_hub-0.26.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: huggingface_hub\nVersion: 0.26.2\n", encoding="utf-8")
    path = os.pathsep.join([str(fake), os.environ["PYTHONPATH"]])
    result = cli(proj, "--revision", OLD, endpoint=hub.endpoint, env={"PYTHONPATH": path})
    error = assert_fails(result, 8)
    assert error == (
        f"ERROR: huggingface_hub 0.26.2 is installed; this script needs the pinned {HUB_PIN}: {PIP_INSTALL}"
    )
    assert not hub.requests and not lock_file(proj).exists()


def test_pin_is_read_from_requirements(proj, hub, cli, tmp_path):
    requirements = proj / "setup" / "requirements.txt"
    text = requirements.read_text(encoding="utf-8")
    assert f"huggingface_hub=={HUB_PIN}\n" in text
    requirements.write_text(text.replace(f"huggingface_hub=={HUB_PIN}", "huggingface_hub==99.0.0"), encoding="utf-8")
    result = cli(proj, "--revision", OLD, endpoint=hub.endpoint)
    installed = importlib.metadata.version("huggingface_hub")
    assert assert_fails(result, 8) == (
        f"ERROR: huggingface_hub {installed} is installed; this script needs the pinned 99.0.0: {PIP_INSTALL}"
    )


@pytest.fixture(scope="module")
def hubless_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("hubless") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def test_without_huggingface_hub_then_with_a_real_old_one(proj, hub, hubless_python):
    """A real interpreter: first no huggingface_hub at all, then the newest of the major before the pin."""
    command = [str(hubless_python), "model-cache/download.py", "--revision", OLD]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("HF_")}
    env["HF_ENDPOINT"] = hub.endpoint
    missing = subprocess.run(command, cwd=proj, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert assert_fails(missing, 8) == (
        f"ERROR: huggingface_hub is not installed; this script needs the pinned {HUB_PIN}: {PIP_INSTALL}"
    )

    older = int(HUB_PIN.split(".")[0]) - 1
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(hubless_python),
            "install",
            "-q",
            "--no-deps",
            f"huggingface_hub>={older},<{older + 1}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    # a failure, not a skip: without it half of this test would quietly not run (the test environment comes from
    # the same package index, as test_hooks' bare cookiecutter does)
    assert install.returncode == 0, f"no huggingface_hub {older}.x from the package index: {install.stderr[-300:]}"
    done = subprocess.run(command, cwd=proj, env=env, capture_output=True, text=True, timeout=60, check=False)
    old = subprocess.run(
        [str(hubless_python), "-c", "from importlib.metadata import version; print(version('huggingface_hub'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert old.startswith(f"{older}.")
    assert assert_fails(done, 8) == (
        f"ERROR: huggingface_hub {old} is installed; this script needs the pinned {HUB_PIN}: {PIP_INSTALL}"
    )
    assert not hub.requests and not lock_file(proj).exists()


def test_classify_needs_no_httpx2(proj):
    """huggingface_hub 0.x/1.x have no httpx2: an error is still classified, not a second traceback."""
    script = (
        "import errno, sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, 'model-cache')\n"
        "import download\n"
        "import huggingface_hub.errors\n"
        "sys.modules['httpx2'] = None  # as where the client is not httpx2: importing it fails\n"
        "print(download.classify(OSError(errno.EIO, 'I/O error'), 'org/model', 'main', Path('here')))\n"
    )
    done = run_cli([sys.executable, "-c", script], cwd=proj, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, '[Errno 5] I/O error: run again; if it persists, delete here and run again')"


def test_redact_masks_userinfo_and_tokens(proj):
    """Error texts other than the endpoint's: a token in a query string, a password in any URL."""
    script = (
        "import sys\n"
        "sys.path.insert(0, 'model-cache')\n"
        "import download\n"
        "print(download.redact(sys.argv[1]))\n"
    )
    text = (
        f"Server error for url 'https://user:{MIRROR_PASSWORD}@mirror.example:8443/api/models/a/b?token={TOKEN}&x=1' "
        f"and http://{TOKEN}@cdn.example/f, Bearer {TOKEN}; hf_hub and HF_ENDPOINT stay"
    )
    done = run_cli([sys.executable, "-c", script, text], cwd=proj, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "Server error for url 'https://***@mirror.example:8443/api/models/a/b?token=***&x=1' "
        "and http://***@cdn.example/f, Bearer hf_***; hf_hub and HF_ENDPOINT stay"
    )


def test_socket_guard_refuses_the_internet(proj, cli, tmp_path):
    probe = "import socket; socket.create_connection(('huggingface.co', 443), timeout=5)"
    result = run_cli([sys.executable, "-c", probe], cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "socket guard" in result.stderr
