"""Downloads from a local HTTP server: success, checksum, HTTP errors, network errors."""

from __future__ import annotations

import gzip
import hashlib
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import ChecksumMismatch, FetchError
from runtime.images.fetch import MAX_REDIRECTS, download, fetch_bytes
from tests.fixtures.mirror import serve_handler, unused_local_url

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, several chunks
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
GZIPPED = gzip.compress(b"layer bytes " * 1000)


class Recorder:
    """The paths the test server was asked for, in order."""

    def __init__(self) -> None:
        self.paths: list[str] = []


def make_handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def send_body(self, body: bytes, *, headers: dict[str, str] | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            recorder.paths.append(self.path)
            if self.path == "/payload":
                self.send_body(PAYLOAD)
            elif self.path == "/small":
                self.send_body(b'{"ok": true}')
            elif self.path == "/moved":
                self.redirect("/payload")
            elif self.path.startswith("/loop"):
                self.redirect(f"/loop{len(recorder.paths)}")
            elif self.path == "/truncated":
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD[:1000])
                self.wfile.flush()
                self.close_connection = True
            elif self.path == "/gzip-encoded":
                self.send_body(GZIPPED, headers={"Content-Encoding": "gzip"})
            elif self.path in ("/trickle", "/endless", "/huge"):
                self.send_response(200)
                if self.path != "/endless":
                    size = 10**12 if self.path == "/huge" else 10**6
                    self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    for _ in range(100_000 if self.path == "/endless" else 20):
                        self.wfile.write(bytes(65536 if self.path == "/endless" else 100))
                        self.wfile.flush()
                        if self.path == "/trickle":
                            time.sleep(0.05)  # each read well within its timeout
                except OSError:
                    pass  # the client gave up: what the tests want
                self.close_connection = True
            elif self.path == "/slow":
                time.sleep(0.4)
                self.send_body(b"late")
            else:
                self.send_error(404, "Not Found")

    return Handler


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(recorder: Recorder) -> Iterator[str]:
    with serve_handler(make_handler(recorder)) as url:
        yield url


def test_download_writes_verified_file(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "payload.bin"
    assert download(f"{server}/payload", dest, sha256=PAYLOAD_SHA256, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert [p.name for p in dest.parent.iterdir()] == ["payload.bin"]


def test_download_without_checksum(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "small.json"
    download(f"{server}/small", dest, sha256=None, progress=False)
    assert dest.read_bytes() == b'{"ok": true}'


def test_cached_file_with_matching_checksum_is_not_downloaded_again(
    server: str, recorder: Recorder, tmp_path: Path
) -> None:
    dest = tmp_path / "payload.bin"
    download(f"{server}/payload", dest, sha256=PAYLOAD_SHA256, progress=False)
    download(f"{server}/payload", dest, sha256=PAYLOAD_SHA256.upper(), progress=False)
    assert recorder.paths == ["/payload"]


def test_checksum_mismatch_leaves_nothing_in_the_cache(server: str, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as caught:
        download(f"{server}/payload", tmp_path / "payload.bin", sha256=wrong, progress=False)
    assert caught.value.expected == wrong
    assert caught.value.actual == PAYLOAD_SHA256
    assert list(tmp_path.iterdir()) == []


def test_http_404_names_url_and_status(server: str, tmp_path: Path) -> None:
    url = f"{server}/nowhere.tar.gz"
    with pytest.raises(FetchError, match="HTTP 404") as caught:
        download(url, tmp_path / "x.tar.gz", sha256=None, progress=False)
    assert caught.value.url == url
    assert url in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_connection_refused(tmp_path: Path) -> None:
    url = f"{unused_local_url()}/file"
    with pytest.raises(FetchError, match="connection refused") as caught:
        download(url, tmp_path / "file", sha256=None, progress=False)
    assert caught.value.url == url
    assert list(tmp_path.iterdir()) == []


def test_dns_failure_says_lookup_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(FetchError, match="host name lookup failed"):
        download("http://mirror.squish.invalid/x", tmp_path / "x", sha256=None, progress=False)


def test_truncated_body_is_a_fetch_error(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="truncated"):
        download(f"{server}/truncated", tmp_path / "t.bin", sha256=None, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_redirect_is_followed(server: str, recorder: Recorder, tmp_path: Path) -> None:
    download(f"{server}/moved", tmp_path / "p", sha256=PAYLOAD_SHA256, progress=False)
    assert recorder.paths == ["/moved", "/payload"]


def test_redirect_loop_is_bounded(server: str, recorder: Recorder, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="too many redirects"):
        download(f"{server}/loop", tmp_path / "l", sha256=None, progress=False)
    assert len(recorder.paths) == MAX_REDIRECTS + 1
    assert list(tmp_path.iterdir()) == []


def test_bytes_are_stored_as_served_even_with_content_encoding(server: str, tmp_path: Path) -> None:
    sha = hashlib.sha256(GZIPPED).hexdigest()
    dest = download(f"{server}/gzip-encoded", tmp_path / "l.tar.gz", sha256=sha, progress=False)
    assert dest.read_bytes() == GZIPPED


def test_slow_server_times_out(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="timed out"):
        download(f"{server}/slow", tmp_path / "s", sha256=None, progress=False, timeout=0.05)


def test_a_trickling_server_is_cut_off_by_the_deadline(server: str, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"took longer than 0.2 s"):
        download(f"{server}/trickle", tmp_path / "t", sha256=None, progress=False, deadline=0.2)
    assert list(tmp_path.iterdir()) == []  # no partial file left


@pytest.mark.parametrize("path", ["/huge", "/endless"])
def test_an_absurd_body_is_refused_and_nothing_is_kept(
    server: str, tmp_path: Path, path: str
) -> None:
    with pytest.raises(FetchError, match="exceeds the 1000000"):
        download(f"{server}{path}", tmp_path / "b", sha256=None, progress=False, max_bytes=10**6)
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_does_not_disturb_the_download(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = download(f"{server}/payload", tmp_path / "p", sha256=PAYLOAD_SHA256, progress=True)
    assert dest.read_bytes() == PAYLOAD
    assert capsys.readouterr().out == ""


def test_bad_checksum_argument_is_refused_before_any_request(
    server: str, recorder: Recorder, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        download(f"{server}/payload", tmp_path / "p", sha256="abc", progress=False)
    assert recorder.paths == []


def test_fetch_bytes_returns_small_documents(server: str) -> None:
    assert fetch_bytes(f"{server}/small", max_bytes=100, timeout=5) == b'{"ok": true}'


def test_fetch_bytes_enforces_its_limit(server: str) -> None:
    with pytest.raises(FetchError, match="exceeds"):
        fetch_bytes(f"{server}/payload", max_bytes=1024, timeout=5)


def test_fetch_bytes_reports_http_errors(server: str) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_bytes(f"{server}/missing.json", max_bytes=1024, timeout=5)
