"""TLS for OAuth tests: a test CA made with openssl, and a client ID metadata document served over HTTPS."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

__all__ = ["MetadataServer", "make_certificates", "metadata_server"]


class MetadataServer:
    """A client ID metadata document served over HTTPS on loopback, with a certificate from a test CA."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}/oauth/client.json"
        self.ca = folder / "ca.pem"
        make_certificates(folder)
        self.document: dict[str, object] = {
            "client_id": self.url,
            "client_name": "Metadata-document client",
            "redirect_uris": ["http://127.0.0.1:9/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                outer.fetches += 1
                body = json.dumps(outer.document).encode() if self.path == "/oauth/client.json" else b"{}"
                self.send_response(200 if self.path == "/oauth/client.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(folder / "server.pem", folder / "server-key.pem")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def make_certificates(folder: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "these tests make a test CA with openssl (it comes with ca-certificates)"

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca-key.pem", "-out", "ca.pem")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server-key.pem",
        "-out", "server.csr")  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
        "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")  # fmt: skip


@pytest.fixture
def metadata_server(tmp_path: Path) -> Iterator[MetadataServer]:
    folder = tmp_path / "tls"
    folder.mkdir()
    server = MetadataServer(folder)
    yield server
    server.close()
