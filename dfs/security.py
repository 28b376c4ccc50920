"""Cluster key and ZeroMQ CURVE: encryption plus authentication on every socket.

A cluster key is one CURVE key pair shared by every member of the cluster
(servers and clients). Servers take it as their server key and accept only
clients that present the same public key (checked by a ZAP handler), so a
peer without the key file completes no handshake and gets nothing.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth.thread

_auth_lock = threading.Lock()
_authenticators: dict[int, zmq.auth.thread.ThreadAuthenticator] = {}


@dataclass(frozen=True)
class Security:
    public: bytes  # z85-encoded CURVE public key
    secret: bytes  # z85-encoded CURVE secret key

    @classmethod
    def generate(cls) -> Security:
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Security:
        data = json.loads(Path(path).read_text())
        return cls(data["public"].encode(), data["secret"].encode())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file readable by its owner only."""
        path = Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"public": self.public.decode(), "secret": self.secret.decode()}, f)
            f.write("\n")

    def apply_server(self, sock: zmq.Socket, ctx: zmq.Context) -> None:
        """Make ``sock`` a CURVE server that admits only holders of the cluster key."""
        self._ensure_authenticator(ctx)
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def apply_client(self, sock: zmq.Socket) -> None:
        sock.curve_serverkey = self.public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP check: the client's public key must be the cluster's."""
        return zmq.utils.z85.encode(key) == self.public if len(key) == 32 else key == self.public

    def _ensure_authenticator(self, ctx: zmq.Context) -> None:
        with _auth_lock:
            if id(ctx) in _authenticators:
                return
            auth = zmq.auth.thread.ThreadAuthenticator(ctx)
            auth.start()
            auth.configure_curve_callback("*", credentials_provider=self)
            _authenticators[id(ctx)] = auth


def load_optional(path: str | os.PathLike[str] | None) -> Security | None:
    """The cluster key at ``path``, or None when no key is configured."""
    if not path:
        return None
    return Security.load(path)
