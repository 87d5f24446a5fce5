"""A local fake of the Azure endpoints that MLClient.jobs.create_or_update talks to.

The fake sits in requests' transport adapter (requests.adapters.HTTPAdapter.send), the last step before a
socket: everything above it is the real azure-ai-ml / azure-core / azure-storage-blob code (serialization,
bearer-token policy, retries, code snapshot hashing and upload). Every request is recorded, so a test can
assert what would have been sent to Azure.
"""

import io
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from azure.core.credentials import AccessToken
from requests.adapters import HTTPAdapter
from urllib3.response import HTTPResponse

SUBSCRIPTION = "00000000-0000-4000-8000-000000000000"
RESOURCE_GROUP = "rg-fake"
WORKSPACE = "ws-fake"
STORAGE_ACCOUNT = "fakestorage"
ARM = "https://management.azure.com"
WS_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
BLOB_HOST = f"{STORAGE_ACCOUNT}.blob.core.windows.net"
FAKE_TOKEN = "fake-bearer-token-for-tests"


class FakeCredential:
    """A TokenCredential that hands out a static token; nothing is looked up."""

    def get_token(self, *scopes, **kwargs):
        return AccessToken(FAKE_TOKEN, int(time.time()) + 3600)


class FailingCredential:
    """A credential that cannot get a token, like DefaultAzureCredential before `az login`."""

    def get_token(self, *scopes, **kwargs):
        from azure.identity import CredentialUnavailableError

        raise CredentialUnavailableError("DefaultAzureCredential failed to retrieve a token (fake)")


@dataclass
class Recorded:
    method: str
    url: str
    body: bytes
    headers: dict

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    def json(self):
        return json.loads(self.body)


@dataclass
class FakeAzure:
    """Answers the ARM, AML asset and blob storage calls of a command job submission."""

    computes: dict = field(default_factory=lambda: {"gpu-cluster": "Standard_NC24ads_A100_v4"})
    requests: list = field(default_factory=list)
    blobs: dict = field(default_factory=dict)
    unhandled: list = field(default_factory=list)

    # ---- what a test reads
    def job_puts(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "PUT" and re.search(r"/jobs/[^/]+$", r.path)]

    # ---- transport
    def send(self, adapter, request, **kwargs):
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        if isinstance(body, str):
            body = body.encode("utf-8")
        record = Recorded(request.method, request.url, body or b"", dict(request.headers))
        self.requests.append(record)
        status, payload, headers = self.route(record)
        return _response(adapter, request, status, payload, headers)

    def route(self, r: Recorded):
        if r.host == BLOB_HOST:
            return self.blob(r)
        if r.host != urlsplit(ARM).hostname:
            self.unhandled.append(r)
            return 404, _error("NotFound", f"fake: unknown host {r.host}"), {}
        path = r.path
        if not path.startswith(WS_PATH):
            self.unhandled.append(r)
            return 404, _error("ResourceGroupNotFound", "fake: unknown workspace"), {}
        rest = path[len(WS_PATH):]
        if rest == "":
            return 200, self.workspace(), {}
        handlers = (
            (r"/computes/([^/]+)", self.compute),
            (r"/codes/([^/]+)/versions", self.code_list),
            (r"/codes/([^/]+)/versions/([^/]+)/startPendingUpload", self.pending_upload),
            (r"/codes/([^/]+)/versions/([^/]+)", self.code_version),
            (r"/environments/([^/]+)/versions/([^/]+)", self.environment_version),
            (r"/datastores/([^/]+)", self.datastore),
            (r"/jobs/([^/]+)", self.job),
        )
        for pattern, handler in handlers:
            match = re.fullmatch(pattern, rest)
            if match:
                return handler(r, *match.groups())
        self.unhandled.append(r)
        return 404, _error("NotFound", f"fake: no handler for {r.method} {rest}"), {}

    # ---- ARM / AML resources
    def workspace(self):
        return {
            "id": WS_PATH,
            "name": WORKSPACE,
            "location": "eastus",
            "properties": {"storageAccount": f"/subscriptions/{SUBSCRIPTION}/storageAccounts/{STORAGE_ACCOUNT}"},
        }

    def compute(self, r, name):
        if name not in self.computes:
            return 404, _error("ResourceNotFound", f"The Resource '{name}' was not found."), {}
        return 200, {
            "id": f"{WS_PATH}/computes/{name}",
            "name": name,
            "location": "eastus",
            "properties": {
                "computeType": "AmlCompute",
                "provisioningState": "Succeeded",
                "properties": {"vmSize": self.computes[name], "scaleSettings": {"maxNodeCount": 1, "minNodeCount": 0}},
            },
        }, {}

    def code_list(self, r, name):
        return 200, {"value": []}, {}

    def pending_upload(self, r, name, version):
        container = "azureml-blobstore-fake"
        blob_uri = f"https://{BLOB_HOST}/{container}/LocalUpload/{version}"
        return 200, {
            "blobReferenceForConsumption": {
                "blobUri": blob_uri,
                "credential": {"credentialType": "SAS", "sasUri": blob_uri + "?sv=2021-08-06&sig=fakesas"},
                "storageAccountArmId": f"/subscriptions/{SUBSCRIPTION}/storageAccounts/{STORAGE_ACCOUNT}",
            },
            "pendingUploadId": version,
            "pendingUploadType": "TemporaryBlobReference",
        }, {}

    def code_version(self, r, name, version):
        if r.method == "PUT":
            body = r.json()
            return 200, {"id": f"{WS_PATH}/codes/{name}/versions/{version}", "name": version, **body}, {}
        return 404, _error("NotFound", "fake: code version not found"), {}

    def environment_version(self, r, name, version):
        if r.method == "PUT":
            body = r.json()
            return 200, {"id": f"{WS_PATH}/environments/{name}/versions/{version}", "name": version, **body}, {}
        return 404, _error("NotFound", "fake: environment version not found"), {}

    def datastore(self, r, name):
        return 200, {
            "id": f"{WS_PATH}/datastores/{name}",
            "name": name,
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": STORAGE_ACCOUNT,
                "containerName": "azureml-blobstore-fake",
                "endpoint": "core.windows.net",
                "protocol": "https",
                "credentials": {"credentialsType": "None"},
                "isDefault": name == "workspaceblobstore",
            },
        }, {}

    def job(self, r, name):
        if r.method == "PUT":
            body = r.json()
            body.setdefault("properties", {})["status"] = "NotStarted"
            body["properties"].setdefault("services", {})["Studio"] = {
                "endpoint": f"https://ml.azure.com/runs/{name}",
                "jobServiceType": "Studio",
            }
            return 201, {"id": f"{WS_PATH}/jobs/{name}", "name": name, "type": "Microsoft.MachineLearningServices/"
                         "workspaces/jobs", **body}, {}
        return 404, _error("NotFound", "fake: job not found"), {}

    # ---- blob storage (the code snapshot upload)
    def blob(self, r: Recorded):
        query = parse_qs(urlsplit(r.url).query)
        key = r.path
        if r.method == "PUT":
            if query.get("comp") == ["metadata"]:
                return 200, b"", {}
            if query.get("comp") == ["block"]:
                self.blobs.setdefault(key + "#blocks", b"")
                self.blobs[key + "#blocks"] += r.body
                return 201, b"", {}
            if query.get("comp") == ["blocklist"]:
                self.blobs[key] = self.blobs.pop(key + "#blocks", b"")
                return 201, b"", {"ETag": '"0x1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
            self.blobs[key] = r.body
            return 201, b"", {"ETag": '"0x1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
        if r.method == "GET" and query.get("comp") == ["list"]:
            xml = (
                '<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="https://'
                f'{BLOB_HOST}/"><Blobs /><NextMarker /></EnumerationResults>'
            )
            return 200, xml.encode(), {"Content-Type": "application/xml"}
        if r.method in ("HEAD", "GET"):
            if key in self.blobs:
                return 200, b"" if r.method == "HEAD" else self.blobs[key], {"Content-Type": "application/octet-stream"}
            return 404, b"", {"x-ms-error-code": "BlobNotFound"}
        self.unhandled.append(r)
        return 400, b"", {}

    # ---- install
    def install(self, monkeypatch):
        fake = self

        def send(adapter, request, **kwargs):
            return fake.send(adapter, request, **kwargs)

        monkeypatch.setattr(HTTPAdapter, "send", send)
        return self


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def _response(adapter, request, status: int, payload, headers: dict):
    if isinstance(payload, (dict, list)):
        data = json.dumps(payload).encode("utf-8")
        content_type = "application/json"
    else:
        data = payload or b""
        content_type = headers.get("Content-Type", "application/octet-stream")
    all_headers = {"Content-Type": content_type, "Content-Length": str(len(data)), "x-ms-request-id": "fake"}
    all_headers.update(headers)
    if request.method == "HEAD":
        data = b""
    raw = HTTPResponse(
        body=io.BytesIO(data), headers=all_headers, status=status, preload_content=False, decode_content=False
    )
    return adapter.build_response(request, raw)
