"""Real git repositories for the git source's tests: made with ``git init``, committed to,
signed with keys ``ssh-keygen`` makes, and served on 127.0.0.1 over ``git daemon`` or over
smart HTTP with TLS (``git http-backend`` behind a small stdlib HTTPS server)."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from tests.support import free_port
from tests.test_reconciler_e2e import greeting_toml

__all__ = (
    "Certificate",
    "Origin",
    "SigningKey",
    "basic_auth_config",
    "git",
    "git_daemon",
    "git_https",
    "web_toml",
)

_IDENTITY = ("-c", "user.name=Tester", "-c", "user.email=tester@example.com")


def web_toml(greeting: str, port: int | None = None) -> str:
    """A squishfile whose spec changes with ``greeting`` (its environment)."""
    return greeting_toml(port, greeting)


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


class SigningKey:
    """An ssh key made for the test, and the allowed-signers line naming it."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(self.path)],
            check=True,
            timeout=30,
        )
        public = self.path.with_suffix(".pub").read_text().split()
        self.allowed = f'tester@example.com namespaces="git" {public[0]} {public[1]}\n'


class Origin:
    """A repository commits are made in; ``url`` serves it over file://."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "--quiet", "--initial-branch=main")

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def commit(
        self, files: Mapping[str, str | None], message: str, *, key: SigningKey | None = None
    ) -> str:
        """Write (None: delete) ``files``, commit them (signed with ``key``); the sha."""
        for name, text in files.items():
            target = self.path / name
            if text is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        git(self.path, "add", "--all")
        sign = ("-c", "gpg.format=ssh", "-c", f"user.signingkey={key.path}") if key else ()
        git(
            self.path,
            *sign,
            "commit",
            "--quiet",
            "--allow-empty",
            *(["-S"] if key else []),
            "-m",
            message,
        )
        return git(self.path, "rev-parse", "HEAD")


@contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """``git daemon`` serving the repositories under ``base`` on 127.0.0.1; the URL
    prefix (``git://127.0.0.1:PORT``). Stopped on leaving, with the ``git-daemon`` that
    ``git`` runs as its child (killing ``git`` alone left that one serving)."""
    port = free_port()
    process = subprocess.Popen(
        [
            "git",
            "daemon",
            "--export-all",
            "--reuseaddr",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # git runs git-daemon as its child: both end together
    )
    try:
        while True:  # the test's own timeout bounds this
            assert process.poll() is None, "git daemon exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        yield f"git://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the group this function started
        process.wait(timeout=30)


class Certificate:
    """A self-signed certificate for 127.0.0.1 (``openssl req -x509``) and its key."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / f"{name}.pem"
        self.key = folder / f"{name}.key"
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-nodes", "-days", "2"),
                *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
                *("-keyout", str(self.key), "-out", str(self.path)),
                *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )


def basic_auth_config(user: str, password: str) -> dict[str, str]:
    """The environment that gives git an ``Authorization`` header for every request, as a
    user would in their config (``http.extraHeader``), without the password in the URL."""
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: {_basic(f'{user}:{password}')}",
    }


def _basic(login: str) -> str:
    return f"Basic {base64.b64encode(login.encode()).decode()}"


class _Backend(BaseHTTPRequestHandler):
    """Runs ``git http-backend`` as a CGI for each request."""

    server: _GitServer

    def do_GET(self) -> None:
        if self.server.auth and self.headers.get("Authorization") != self.server.auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self._body()
        done = subprocess.run(
            ["git", "http-backend"],
            input=body,
            env=self._cgi_env(len(body)),
            capture_output=True,
            check=False,
            timeout=60,
        )
        self._answer(done.stdout)

    do_POST = do_GET

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()  # the empty line after the last chunk
        return b"".join(chunks)

    def _cgi_env(self, length: int) -> dict[str, str]:
        path, _, query = self.path.partition("?")
        headers = {
            "HTTP_" + name.upper().replace("-", "_"): value
            for name, value in self.headers.items()
            if name.lower() not in ("content-type", "content-length", "transfer-encoding")
        }
        return {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/"),
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length),
            "REMOTE_ADDR": self.client_address[0],
            **headers,
        }

    def _answer(self, out: bytes) -> None:
        """Send what the CGI wrote: its headers (``Status:`` among them), then its body."""
        end = re.search(rb"\r?\n\r?\n", out)
        head, payload = (out[: end.start()], out[end.end() :]) if end else (out, b"")
        headers = [line.split(":", 1) for line in head.decode().splitlines() if ":" in line]
        status = next((value.strip() for name, value in headers if name == "Status"), "200 OK")
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for name, value in headers:
            if name not in ("Status", "Content-Length"):  # the length is counted here
                self.send_header(name, value.strip())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test's failures say what went wrong."""


class _GitServer(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close joins every request's thread
    root: Path
    auth: str | None

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        """Quiet for a client that refuses the certificate or hangs up (a test's point)."""
        if not isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def git_https(base: Path, certificate: Certificate, *, login: str | None = None) -> Iterator[str]:
    """Smart HTTP with TLS on 127.0.0.1, serving the repositories under ``base``; the URL
    prefix (``https://127.0.0.1:PORT``). With ``login`` (``user:password``), a request
    without that basic-auth header is answered 401. The server thread, and with it every
    request's ``git http-backend``, has ended on leaving."""
    server = _GitServer(("127.0.0.1", 0), _Backend)
    server.root = base
    server.auth = _basic(login) if login else None
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate.path, certificate.key)
    # the handshake happens in each request's thread: a client that refuses the
    # certificate ends its own request, never the accepting loop
    server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=server.serve_forever, name="git-https")
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()  # joins the request threads
        thread.join()
