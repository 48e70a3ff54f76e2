"""Another account against a user's squish: run by ``scripts/peer-check.sh`` as root.

    python tests/peer_check.py start STATE    as the user: a holder and one container
    python tests/peer_check.py probe STATE PID...   as ANOTHER account: try to get in
    python tests/peer_check.py stop STATE     as the user: remove them

``probe`` uses the standard library only (the other account may not read the user's
virtualenv) and exits 1 if any attempt got through.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path


def start(state: Path) -> None:
    from runtime.api.spec import ContainerSpec, RootfsRef
    from runtime.client.linux import LinuxRuntime

    runtime = LinuxRuntime(state=state)
    info = runtime.run(
        ContainerSpec(
            name="peer-target",
            rootfs=RootfsRef(kind="busybox", version="builtin"),
            argv=("sleep", "600"),
            network="none",
            stop_timeout=0,
        )
    )
    holder = runtime.holder.identity()
    assert holder is not None and info.pid is not None
    print(holder.pid, info.pid)


def stop(state: Path) -> None:
    from runtime.client.linux import LinuxRuntime

    LinuxRuntime(state=state).shutdown()


def _attempt(what: str, action: object) -> tuple[str, str]:
    try:
        result = action() if callable(action) else action
    except PermissionError:
        return what, "refused"
    except OSError as exc:
        return what, f"refused ({exc.strerror})"
    return what, f"GOT THROUGH: {result!r}"


def _connect(path: Path) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b'{"op": "ping"}')
        sock.shutdown(socket.SHUT_WR)
        return sock.recv(4096).decode()


def probe(state: Path, pids: list[int]) -> int:
    results = [
        _attempt("list the state folder", lambda: os.listdir(state)),
        _attempt("read a container record", lambda: (state / "containers").stat()),
        _attempt("connect to the holder", lambda: _connect(state / "pause.sock")),
    ]
    for pid in pids:
        results.append(_attempt(f"signal pid {pid}", lambda pid=pid: os.kill(pid, 0)))
        results.append(
            _attempt(
                f"read /proc/{pid}/environ",
                lambda pid=pid: Path(f"/proc/{pid}/environ").read_bytes()[:20],
            )
        )
    print(json.dumps(dict(results), indent=2))
    return 1 if any(v.startswith("GOT THROUGH") for _, v in results) else 0


def main() -> int:
    command, state = sys.argv[1], Path(sys.argv[2])
    if command == "start":
        start(state)
    elif command == "stop":
        stop(state)
    elif command == "probe":
        return probe(state, [int(p) for p in sys.argv[3:]])
    else:
        raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
