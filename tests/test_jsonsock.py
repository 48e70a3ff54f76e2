"""The one-object-per-connection exchange under a crowd: a listener with a short backlog
(slirp4netns' API socket) makes a unix ``connect`` with a timeout fail at once with
EAGAIN; every asker must wait its turn instead."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

from runtime.util import jsonsock

ASKERS = 12


def _serve(listener: socket.socket, count: int, everyone_asked: threading.Event) -> None:
    everyone_asked.wait(10)  # let the backlog fill before answering anyone
    for _ in range(count):
        conn, _ = listener.accept()
        with conn:
            request = jsonsock.decode_object(jsonsock.read_to_eof(conn, 1 << 16))
            conn.sendall(json.dumps({"echo": request["n"]}).encode())


def test_a_crowd_at_a_short_backlog_waits_its_turn(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    asked = threading.Barrier(ASKERS + 1)
    everyone_asked = threading.Event()
    answers: dict[int, object] = {}

    def ask(n: int) -> None:
        asked.wait(10)
        try:
            answers[n] = jsonsock.exchange(path, {"n": n}, timeout=30.0, limit=1 << 16)
        except OSError as exc:
            answers[n] = exc

    server = threading.Thread(target=_serve, args=(listener, ASKERS, everyone_asked))
    askers = [threading.Thread(target=ask, args=(n,)) for n in range(ASKERS)]
    for thread in (server, *askers):
        thread.start()
    asked.wait(10)
    everyone_asked.set()
    for thread in askers:
        thread.join(60)
    listener.close()
    server.join(10)
    assert answers == {n: {"echo": n} for n in range(ASKERS)}
