"""Downloads into the cache: streamed, checksum-verified, atomically published.

Why httpx rather than ``urllib.request``:

* **Timeouts** — httpx applies a timeout to every phase (connect, each read, each
  write, pool wait) by default; urllib only has a single socket timeout and no default,
  so a stalled mirror can hang the runtime forever.
* **Redirects** — mirrors and CDNs redirect; httpx follows them with an explicit bound
  (:data:`MAX_REDIRECTS`) and reports a loop as ``TooManyRedirects`` instead of urllib's
  opaque ``HTTPError 302`` after its own hard-coded limit.
* **Streaming** — ``Client.stream`` hands over the body chunk by chunk, so a root
  filesystem tarball is hashed and written to disk without being held in memory, and
  ``iter_raw`` gives the bytes exactly as served (no transparent decompression that would
  break the sha256 of a ``.tar.gz`` served with ``Content-Encoding: gzip``).
* **Truncation** — its HTTP/1.1 parser (h11) refuses a body shorter than its
  ``Content-Length``; we check the count ourselves as well.

Every failure is a :class:`~runtime.errors.FetchError` naming the URL and a reason a
user can act on (refused, DNS, timeout, HTTP status, truncated), or a
:class:`~runtime.errors.ChecksumMismatch`. A failed download never leaves a file under
the destination name: bytes go to a temporary file in the destination's folder and are
``os.replace``-d into place only after the sha256 matched. That temporary file is locked
(``flock``) while it is written; :func:`sweep_partial` removes those a killed process left.

A :class:`~runtime.util.cancel.Cancel` token stops a download at once: it is checked per
chunk, and cancelling shuts the connection's socket down, so a read blocked on a stalled
server returns (before the response headers arrive, only the read timeout bounds it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from runtime.errors import ChecksumMismatch, FetchError
from runtime.util.cancel import Cancel, never

# httpx (with its own command line's imports) and rich's progress bars are imported by
# the functions that download, not here: every command imports this module (through the
# runtime), and most never download anything.
if TYPE_CHECKING:
    import httpx

__all__ = (
    "DEADLINE",
    "MAX_DOWNLOAD",
    "MAX_REDIRECTS",
    "PARTIAL_SUFFIX",
    "download",
    "fetch_bytes",
    "file_sha256",
    "sweep_partial",
)

MAX_REDIRECTS = 10
"""How many redirects one request may follow before it fails as a loop."""
MAX_DOWNLOAD = 4 * 1024**3
"""Largest body :func:`download` accepts, in bytes (declared or actually sent)."""
DEADLINE = 900.0
"""Seconds a download's body may take to arrive (checked as each piece arrives): a server
that trickles bytes just fast enough to beat each read's timeout is still cut off."""

PARTIAL_SUFFIX = ".part"
"""The suffix of a download in progress (hidden: its name starts with a dot)."""
_PARTIAL_ATTEMPTS = 5
_CHUNK_SIZE = 256 * 1024
_SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
_USER_AGENT = "squish (rootless container runtime)"


def file_sha256(path: Path) -> str:
    """The lowercase hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None,
    progress: bool | None = None,
    timeout: float = 30.0,
    deadline: float = DEADLINE,
    max_bytes: int = MAX_DOWNLOAD,
    cancel: Cancel | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    With ``sha256`` the bytes must hash to it, else :class:`ChecksumMismatch` is raised
    and nothing is written under ``dest``; if ``dest`` already holds those bytes no
    request is made. ``progress`` shows a progress bar on stderr (``None``: only when
    stderr is a terminal). ``timeout`` bounds each connect/read/write, in seconds;
    ``deadline`` the whole download; ``max_bytes`` its size. ``cancel`` stops it with
    :class:`~runtime.util.cancel.Cancelled`.
    """
    expected = _normalise_sha256(sha256) if sha256 is not None else None
    if expected is not None and dest.is_file() and file_sha256(dest) == expected:
        return dest
    show_progress = sys.stderr.isatty() if progress is None else progress
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_path = _new_partial(dest)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _stream_into(
                url,
                out,
                label=dest.name,
                show_progress=show_progress,
                timeout=timeout,
                limits=(time.monotonic() + deadline, deadline, max_bytes),
                cancel=cancel or never(),
            )
            out.flush()
            os.fsync(out.fileno())
            if expected is not None and actual != expected:
                raise ChecksumMismatch(url, expected, actual)
            os.fchmod(out.fileno(), 0o644)
            os.replace(temp_path, dest)  # still locked: a sweep never takes it meanwhile
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return dest


def _new_partial(dest: Path) -> tuple[int, Path]:
    """A new locked partial file for ``dest``. A sweep may find it in the instant before
    it is locked and delete it: then another is made."""
    for _ in range(_PARTIAL_ATTEMPTS):
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=PARTIAL_SUFFIX, dir=dest.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            named = os.stat(name, follow_symlinks=False)
        except FileNotFoundError:
            os.close(fd)
            continue
        opened = os.fstat(fd)
        if (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino):
            return fd, Path(name)
        os.close(fd)
    raise FileNotFoundError(errno.ENOENT, "partial downloads keep vanishing", str(dest.parent))


def sweep_partial(folder: Path) -> list[str]:
    """Delete the partial downloads in ``folder`` that nobody writes any more (a killed
    process's: their lock is free); return their names."""
    swept: list[str] = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(".") and n.endswith(PARTIAL_SUFFIX)]
    except FileNotFoundError:
        return swept
    for name in names:
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            (folder / name).unlink(missing_ok=True)
            swept.append(name)
        except BlockingIOError:
            continue
        finally:
            os.close(fd)
    return sorted(swept)


def fetch_bytes(url: str, *, max_bytes: int, timeout: float = 30.0) -> bytes:
    """GET a small document (an index file) into memory; at most ``max_bytes`` bytes."""
    body = bytearray()
    with _translated_errors(url), _client(timeout) as client, client.stream("GET", url) as response:
        _check_status(url, response)
        declared = _declared_length(url, response)
        if declared is not None and declared > max_bytes:
            raise FetchError(url, f"response of {declared} bytes exceeds the {max_bytes} limit")
        for chunk in response.iter_bytes(_CHUNK_SIZE):
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(url, f"response exceeds the {max_bytes} byte limit")
    return bytes(body)


def _normalise_sha256(sha256: str) -> str:
    if not _SHA256_PATTERN.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return sha256.lower()


def _client(timeout: float) -> httpx.Client:
    import httpx

    return httpx.Client(
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=httpx.Timeout(timeout),
        headers={"User-Agent": _USER_AGENT},
    )


def _stream_into(
    url: str,
    out: BinaryIO,
    *,
    label: str,
    show_progress: bool,
    timeout: float,
    limits: tuple[float, float, int],
    cancel: Cancel,
) -> str:
    """Stream the body of ``url`` into ``out``; return its sha256. ``limits``: the
    monotonic time it must end by, that deadline in seconds (for messages), most bytes."""
    ends_by, deadline, max_bytes = limits
    digest = hashlib.sha256()
    received = 0
    with (
        _translated_errors(url),
        _client(timeout) as client,
        client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response,
    ):
        _check_status(url, response)
        declared = _declared_length(url, response)
        if declared is not None and declared > max_bytes:
            raise FetchError(url, f"response of {declared} bytes exceeds the {max_bytes} limit")
        with (
            cancel.unblocking(functools.partial(_shut_down, response)),
            _progress_reporter(label, declared, enabled=show_progress) as advance,
        ):
            for chunk in _chunks(response, cancel):  # as they arrive: checked per read
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                advance(len(chunk))
                if received > max_bytes:
                    raise FetchError(url, f"response exceeds the {max_bytes} byte limit")
                if time.monotonic() > ends_by:
                    raise FetchError(
                        url, f"download took longer than {deadline:g} s ({received} bytes)"
                    )
    if declared is not None and received != declared:
        raise FetchError(url, f"truncated body: got {received} of {declared} bytes")
    return digest.hexdigest()


def _chunks(response: httpx.Response, cancel: Cancel) -> Iterator[bytes]:
    """The raw body as it arrives; :class:`Cancelled` (not a broken connection) once
    ``cancel`` is set, whose callback shut the socket down."""
    import httpx

    cancel.check()
    try:
        for chunk in response.iter_raw():
            cancel.check()
            yield chunk
    except httpx.HTTPError:
        cancel.check()
        raise


def _shut_down(response: httpx.Response) -> None:
    """Make a read blocked on ``response``'s connection return."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _check_status(url: str, response: httpx.Response) -> None:
    if not response.is_success:
        where = "" if str(response.url) == url else f" (after redirect to {response.url})"
        phrase = f" {response.reason_phrase}" if response.reason_phrase else ""
        raise FetchError(url, f"HTTP {response.status_code}{phrase}{where}")


def _declared_length(url: str, response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise FetchError(url, f"invalid Content-Length header {value!r}") from None
    if length < 0:
        raise FetchError(url, f"invalid Content-Length header {value!r}")
    return length


@contextmanager
def _progress_reporter(
    label: str, total: int | None, *, enabled: bool
) -> Iterator[Callable[[int], None]]:
    """Yield a callback taking a byte count; draws a rich bar on stderr when enabled."""
    if not enabled:
        yield lambda _count: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda count: bar.advance(task, count)


@contextmanager
def _translated_errors(url: str) -> Iterator[None]:
    """Turn httpx's exceptions into a :class:`FetchError` with a human reason."""
    import httpx

    try:
        yield
    except httpx.TooManyRedirects:
        raise FetchError(url, f"too many redirects (more than {MAX_REDIRECTS})") from None
    except httpx.TimeoutException as exc:
        raise FetchError(url, f"timed out ({type(exc).__name__})") from exc
    except httpx.ConnectError as exc:
        raise FetchError(url, _describe_connect_failure(exc)) from exc
    except httpx.RemoteProtocolError as exc:
        raise FetchError(url, f"truncated or malformed response: {exc}") from exc
    except httpx.UnsupportedProtocol as exc:
        raise FetchError(url, f"unsupported URL scheme: {exc}") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise FetchError(url, f"{type(exc).__name__}: {exc}") from exc


def _describe_connect_failure(exc: httpx.ConnectError) -> str:
    """Name the root cause of a failed connect from the exception chain."""
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, socket.gaierror):
            return f"host name lookup failed (DNS: {cause.strerror or cause}); are you offline?"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused (nothing is listening there)"
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"network unreachable ({cause.strerror}); are you offline?"
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return f"cannot connect: {exc}"
