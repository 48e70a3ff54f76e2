"""Port-edit stress: a file dropped into a real ``reconciler run`` loop, its port edited
a given time after the drop, and whether the edit ever restarted the container.

    python bench/portedit.py [--rounds 3] [--delays 0,1,2,5,10,20,50,100,answered] [--cold]
                             [--gap MS] [--quick]

For each delay (milliseconds after the drop; ``answered``: once the first port answers)
and each round: the file is written (renamed into place) with one port, then with
another; once the new port answers and the loop's record says it is in sync, the
container must have been started once (``restarts`` 0, the loop applied no
``recreate``/``destroy``/``start`` for it after its ``create``). ``--cold``: each
round runs its own loop on its own state folder (the holder and the network keeper
start with the first drop). ``--gap``: the edit is made as git checks a file out,
unlink then create, GAP ms apart (a checkout paused on a loaded machine). Prints each
restart found with the loop's lines for it; exits 1 if there was one.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from reconcile import SQUISHFILE, answers, wait_until
from results import Results, parse

from reconciler.control.status import StatusStore
from runtime.client.linux import LinuxRuntime
from tests.support import free_ports, write_atomically

PAGE = b"bench\n"


@dataclass
class Loop:
    folder: Path
    state: Path
    process: subprocess.Popen[bytes]
    output: Path
    runtime: LinuxRuntime

    def lines(self) -> list[str]:
        return self.output.read_text().splitlines()

    def record(self) -> dict[str, object]:
        try:
            data = json.loads(StatusStore(self.state, self.folder).path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        loop: dict[str, object] = data.get("loop") or {}
        return loop


@contextmanager
def running_loop(work: Path) -> Iterator[Loop]:
    folder = work / f"desired-{secrets.token_hex(3)}"
    (folder / "site").mkdir(parents=True)
    (folder / "site" / "index.html").write_bytes(PAGE)
    state = Path("/dev/shm") / f"sqp-{secrets.token_hex(4)}"
    output = work / f"{folder.name}.out"
    env = {**os.environ, "SQUISH_STATE_DIR": str(state)}
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "run", "--allow-mass-delete", str(folder)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    loop = Loop(folder, state, process, output, LinuxRuntime(state=state))
    try:
        wait_until(lambda: loop.record().get("pid") == process.pid)
        yield loop
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "down", str(folder)],
            env=env,
            capture_output=True,
            check=False,
        )
        loop.runtime.shutdown()
        shutil.rmtree(state, ignore_errors=True)


def one_edit(loop: Loop, name: str, delay: str, gap: float | None) -> str | None:
    """Drop, edit after ``delay``, check; what went wrong, or None."""
    path = loop.folder / f"{name}.toml"
    first, second = free_ports(2)
    seen = len(loop.lines())
    write_atomically(path, SQUISHFILE.format(port=first))
    pid = None
    if delay == "answered":
        wait_until(partial(answers, first))
        pid = loop.runtime.inspect(name).pid
    else:
        time.sleep(float(delay) / 1000)
    if gap is None:
        write_atomically(path, SQUISHFILE.format(port=second))
    else:  # as git checks a file out, its unlink and create ``gap`` ms apart
        path.unlink()
        time.sleep(gap / 1000)
        path.write_text(SQUISHFILE.format(port=second))
    wait_until(partial(answers, second))
    time.sleep(0.3)  # any pass the edit still causes has run
    after = loop.runtime.inspect(name)
    mine = [line for line in loop.lines()[seen:] if f" {name}" in line or f"{name}:" in line]
    kinds = [line.split()[0] for line in mine]
    restarted = (
        after.restarts != 0
        or pid not in (None, after.pid)
        or any(k in ("recreate", "destroy", "start", "heal") for k in kinds)
    )
    creates = kinds.count("create")
    path.unlink()
    wait_until(lambda: name not in {c.name for c in loop.runtime.list()})
    if restarted or creates != 1:
        said = "\n  ".join(mine)
        return (
            f"{name} delay {delay}: pid {pid} -> {after.pid}, restarts {after.restarts}:\n  {said}"
        )
    return None


def edits(
    work: Path, rounds: int, delays: list[str], cold: bool
) -> Iterator[tuple[Loop, str, str]]:
    """Each edit's loop, container name and delay: a loop of its own (``cold``), else
    one loop for all."""
    with ExitStack() as stack:
        shared = None if cold else stack.enter_context(running_loop(work))
        for r in range(rounds):
            for i, delay in enumerate(delays):
                if shared is not None:
                    yield shared, f"w{r}x{i}", delay
                    continue
                with running_loop(work) as loop:
                    yield loop, f"c{r}x{i}", delay


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delays", default="0,1,2,5,10,20,50,100,answered")
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--gap", type=float, help="edit by unlink, GAP ms, create")
    args = parse(parser, rounds=1, delays="0,2,answered")
    delays = args.delays.split(",")
    work = Path(tempfile.mkdtemp(prefix="squish-portedit-"))
    failures: list[str] = []
    count = 0
    print("load average", os.getloadavg(), flush=True)
    try:
        for loop, name, delay in edits(work, args.rounds, delays, args.cold):
            failure = one_edit(loop, name, delay, args.gap)
            count += 1
            if failure:
                failures.append(failure)
                print(failure, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(failures)} of {count} edits restarted; load average {os.getloadavg()}")
    out = Results("portedit")
    out.figure(f"port edits that restarted their container, of {count}", len(failures), "")
    out.save()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
