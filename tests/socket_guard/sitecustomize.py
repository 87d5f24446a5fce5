"""The tests' socket guard: any connection or name lookup off the loopback fails, so no test reaches the network.

Test subprocesses load it first (this folder on PYTHONPATH: `conftest.guarded`); a test process can install the
same rules with monkeypatch (`conftest.guard_this_process`).
"""

import socket

LOOPBACK = ("127.0.0.1", "::1", "localhost")
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _host(address):
    host = address[0] if isinstance(address, tuple) else address
    return host.decode() if isinstance(host, bytes) else host


def connect(self, address):
    if self.family != socket.AF_UNIX and _host(address) not in LOOPBACK:
        raise ConnectionRefusedError(f"socket guard: network access to {address} refused in tests")
    return _connect(self, address)


def connect_ex(self, address):
    if self.family != socket.AF_UNIX and _host(address) not in LOOPBACK:
        raise ConnectionRefusedError(f"socket guard: network access to {address} refused in tests")
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    if host is not None and _host(host) not in LOOPBACK:
        raise socket.gaierror(f"socket guard: DNS lookup of {host} refused in tests")
    return _getaddrinfo(host, *args, **kwargs)


if __name__ == "sitecustomize":
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
