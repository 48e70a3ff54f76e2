"""The log pump: the one writer of a container's log, which it caps and rotates.

The command's stdout and stderr are the write end of a pipe; a pump process outside the
container (forked by the spare that launches it, then a child of the holder, a
subreaper) holds the read end and moves what comes into ``output.log`` with
``splice`` (no copy through user space). Before a write would take the file past
``max_size`` it rotates: ``output.log`` becomes ``output.log.1``, ``.1`` becomes ``.2``
and so on, and the oldest beyond ``max_files`` goes; with ``max_files = 1`` the log
starts over. A write larger than what is left is split, so no file exceeds the cap.

The pump ends when the last writer closes the pipe (the container's processes are gone)
and it has moved everything. While the disk is slow the pipe (256 KiB) fills and the
command's writes wait, as they do with Docker's default blocking mode and podman's
conmon; a disk that refuses writes (full, read-only) costs the output, never the
command. If the pump itself dies, the read end closes: the command's next write gets
SIGPIPE (EPIPE if it ignores that signal), as a container whose conmon died does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from runtime.util.processes import close_fds_except

__all__ = ("PIPE_SIZE", "log_pipe", "open_log", "pump", "rotate", "start_pump")

PIPE_SIZE = 256 << 10
"""The pipe's buffer: what the command may write ahead of a slow disk. Pipe buffers count
against the user's ``/proc/sys/fs/pipe-user-pages-soft`` (64 MiB by default; past it
every new pipe of the user gets 8 KiB): at 256 KiB, 200 containers take 50 MiB of it.
A megabyte was no faster (``bench/logs.py``)."""
_CHUNK = 1 << 20


def log_pipe() -> tuple[int, int]:
    """A pipe (read end, write end) for a command's output, its buffer made larger."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # a lower pipe-max-size: the default buffer
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


def open_log(path: str) -> int:
    """The log file opened for writing at its end (its folder made if missing).

    Not ``O_APPEND``: ``splice`` refuses such files; the pump is the only writer.
    """
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.lseek(fd, 0, os.SEEK_END)
    return fd


def rotate(path: str, max_files: int) -> None:
    """Shift ``path`` to ``path.1`` (and each ``path.N`` to ``path.N+1``), keeping
    ``max_files`` files in all; with one file, ``path`` is removed."""
    for index in range(max_files - 1, 0, -1):
        older = path if index == 1 else f"{path}.{index - 1}"
        with contextlib.suppress(FileNotFoundError):
            os.replace(older, f"{path}.{index}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class _Mover:
    """Moves bytes from the pipe to the log: ``splice``, or read and write where the
    file system cannot splice."""

    def __init__(self, source: int) -> None:
        self.source = source
        self.can_splice = True

    def move(self, target: int, count: int) -> int:
        """Bytes taken from the pipe (at most ``count``); 0 at the end of the output."""
        if self.can_splice:
            try:
                return os.splice(self.source, target, count)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    return self._drop(count)
                self.can_splice = False
        data = os.read(self.source, count)
        with contextlib.suppress(OSError):  # the disk refused: the output is lost, not the command
            os.write(target, data)
        return len(data)

    def _drop(self, count: int) -> int:
        """The disk refused a splice: take the bytes off the pipe all the same."""
        return len(os.read(self.source, count))


def _reopen(path: str) -> int:
    """A fresh log after a rotation; if it cannot be made (no inode left, the folder
    removed), ``/dev/null`` until the next rotation tries again."""
    try:
        return open_log(path)
    except OSError:
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def pump(source: int, log_fd: int, path: str, max_size: int, max_files: int) -> None:
    """Move the output on ``source`` into ``log_fd`` (open on ``path``) until EOF,
    rotating before ``path`` would exceed ``max_size`` bytes."""
    mover = _Mover(source)
    size = os.fstat(log_fd).st_size
    while True:
        if size >= max_size:
            os.close(log_fd)
            rotate(path, max_files)
            log_fd = _reopen(path)
            size = 0
        moved = mover.move(log_fd, min(_CHUNK, max_size - size))
        if moved == 0:
            break
        size += moved
    os.close(log_fd)


def start_pump(
    source: int, log_fd: int, path: str, max_size: int, max_files: int, native: str | None = None
) -> int:
    """Start the pump process; return its pid. The caller closes its copies of
    ``source`` and ``log_fd``. With ``native`` (``runtime.native``) the process is the
    native pump, started with ``posix_spawn`` (no copy of this process's page tables,
    and none of its pages left to copy on its next writes: the launch goes on with
    them); if that binary cannot run, a fork pumps in Python."""
    if native is not None:
        with contextlib.suppress(OSError):
            return _spawn_native(native, source, log_fd, path, max_size, max_files)
    pid = os.fork()
    if pid != 0:
        return pid
    code = 0
    try:
        close_fds_except({source, log_fd})
        if native is not None:
            _exec_native(native, source, log_fd, path, max_size, max_files)
        pump(source, log_fd, path, max_size, max_files)
    except BaseException:
        code = 1
    os._exit(code)


def _spawn_native(
    native: str, source: int, log_fd: int, path: str, max_size: int, max_files: int
) -> int:
    """``posix_spawn`` the native pump with ``source`` and ``log_fd`` (and stdio) only:
    every other descriptor of this process is closed in it, inheritable or not."""
    keep = {0, 1, 2, source, log_fd}
    actions = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _open_fds() if fd not in keep]
    argv = _native_argv(source, log_fd, path, max_size, max_files)
    for fd in (source, log_fd):
        os.set_inheritable(fd, True)
    try:
        return os.posix_spawn(native, argv, {}, file_actions=actions)
    finally:
        for fd in (source, log_fd):
            os.set_inheritable(fd, False)


def _open_fds() -> list[int]:
    """The descriptors open in this process (that of the listing itself gone)."""
    listed = [int(name) for name in os.listdir("/proc/self/fd")]
    return [fd for fd in listed if _is_open(fd)]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _native_argv(source: int, log_fd: int, path: str, max_size: int, max_files: int) -> list[str]:
    return ["squish-pump", "pump", str(source), str(log_fd), path, str(max_size), str(max_files)]


def _exec_native(
    native: str, source: int, log_fd: int, path: str, max_size: int, max_files: int
) -> None:
    """Become the native pump; return only if it cannot be executed."""
    for fd in (source, log_fd):
        os.set_inheritable(fd, True)
    argv = _native_argv(source, log_fd, path, max_size, max_files)
    with contextlib.suppress(OSError):
        os.execve(native, argv, {})
    for fd in (source, log_fd):
        os.set_inheritable(fd, False)
