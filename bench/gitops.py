"""Git source benchmark: push → answering, by webhook and by polling; a 500-file repository.

(a) One ``reconciler run --git`` following a repository served by ``git daemon`` on
127.0.0.1, with its ``--listen`` endpoint. Each run commits a new greeting for one
container, pushes it, and times from the end of the push until the container's page on
its host port says the new greeting (the container is recreated: a stop-first
replacement). Two ways to learn of the push: a signed GitHub-style webhook sent right
after the push (the loop polls only hourly), and polling every ``--interval``.
(b) The same loop on a repository of ``--files`` squishfiles, of which ``--here`` are
placed on this host (the rest on another: parsed and validated by every load, run
nowhere here): push → answering for one changed file, and the loop's own time for that
pass (``last_pass_ms`` of its record); then its CPU time over ``--idle`` seconds with no
new commit (the default 30 s interval: it fetches meanwhile).
The figures go to bench/out/gitops.json (bench/results.py).

    python bench/gitops.py [-n 10] [--interval 1s] [--files 500] [--here 10] [--idle 60]
                           [--quick]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*

from results import Results, p90, parse

from runtime.client.linux import LinuxRuntime
from tests.gitrepos import Origin, git, git_daemon
from tests.support import free_port
from tests.test_reconciler_e2e import ROOT, cli_env, greeting_toml, serves

SECRET = "bench-secret"


def placed(port: int | None, greeting: str, host: str) -> str:
    return greeting_toml(port, greeting) + f'\n[placement]\nhosts = ["{host}"]\n'


class Bench:
    """A repository, its served copy, and one loop following it."""

    def __init__(self, work: Path, files: dict[str, str]) -> None:
        self.work = work
        self.origin = Origin(work / "origin")
        self.origin.commit(files, "start")
        self.served = work / "served"
        self.served.mkdir()
        git(self.served, "clone", "--quiet", "--bare", str(self.origin.path), "ops.git")
        self.secret = work / "secret"
        self.secret.write_text(SECRET + "\n")

    def push(self, files: dict[str, str], message: str) -> None:
        self.origin.commit(files, message)
        git(self.origin.path, "push", "--quiet", str(self.served / "ops.git"), "main")

    @contextmanager
    def loop(self, url: str, state: Path, cache: Path, interval: str) -> Iterator[Loop]:
        port = free_port()
        argv = [sys.executable, "-m", "reconciler.cli", "run", "--git", url, "--host", "here"]
        argv += ["--interval", interval, "--listen", f"127.0.0.1:{port}"]
        argv += ["--webhook-secret-file", str(self.secret)]
        env = cli_env(state, cache)
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            yield Loop(process, f"http://127.0.0.1:{port}")
        finally:
            process.kill()
            process.wait()
            subprocess.run(
                [sys.executable, "-m", "reconciler.cli", "down", "--git", url],
                cwd=ROOT,
                env=env,
                capture_output=True,
                check=False,
            )


class Loop:
    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process, self.url = process, url

    def hook(self) -> None:
        body = json.dumps({"ref": "refs/heads/main"}).encode()
        digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={digest}"}
        answer = httpx.post(f"{self.url}/hooks/github", content=body, headers=headers, timeout=5)
        if answer.status_code != 202:
            raise RuntimeError(f"webhook answered {answer.status_code}")

    def last_pass_ms(self) -> float:
        document = httpx.get(f"{self.url}/status", timeout=30).json()
        return float(document["loop"]["last_pass_ms"] or 0.0)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def until(check: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"never: {what}")
        time.sleep(0.002)


def push_to_answer(bench: Bench, loop: Loop, port: int, runs: int, hook: bool) -> list[float]:
    """ms from the end of a push to the new greeting on ``port``; one warm-up run."""
    samples = []
    for run in range(runs + 1):
        greeting = f"g{run}-{secrets.token_hex(2)}"
        bench.push({"web.toml": placed(port, greeting, "here")}, greeting)
        start = time.perf_counter()
        if hook:
            loop.hook()
        until(functools.partial(serves, port, f"{greeting}\n"), f"{greeting} served")
        samples.append((time.perf_counter() - start) * 1000)
    return samples[1:]


def part_a(args: argparse.Namespace, work: Path, cache: Path) -> dict[str, list[float]]:
    port = free_port()
    bench = Bench(work / "a", {"web.toml": placed(port, "start", "here")})
    found = {}
    with git_daemon(bench.served) as base:
        for mode, interval in (
            ("webhook", "1h"),
            (f"polling every {args.interval}", args.interval),
        ):
            state = Path(tempfile.mkdtemp(prefix="sqb-", dir="/dev/shm"))
            with bench.loop(f"{base}/ops.git", state, cache, interval) as loop:
                until(lambda: serves(port, "start\n") or _served_any(port), "the first answer")
                found[mode] = push_to_answer(bench, loop, port, args.runs, mode == "webhook")
            LinuxRuntime(state=state, cache=cache).shutdown()
            shutil.rmtree(state, ignore_errors=True)
    return found


def _served_any(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def part_b(args: argparse.Namespace, work: Path, cache: Path) -> dict[str, float]:
    ports = [free_port() for _ in range(args.here)]
    files = {f"f{i:03d}.toml": placed(None, f"x{i}", "elsewhere") for i in range(args.files)}
    for i, port in enumerate(ports):
        files[f"f{i:03d}.toml"] = placed(port, "start", "here")
    bench = Bench(work / "b", files)
    state = Path(tempfile.mkdtemp(prefix="sqb-", dir="/dev/shm"))
    with (
        git_daemon(bench.served) as base,
        bench.loop(f"{base}/ops.git", state, cache, "30s") as loop,
    ):
        for port in ports:
            until(functools.partial(serves, port, "start\n"), "every container here answers", 600)
        passes = []
        answers = []
        for run in range(args.runs + 1):
            greeting = f"g{run}"
            bench.push({"f000.toml": placed(ports[0], greeting, "here")}, greeting)
            start = time.perf_counter()
            loop.hook()
            until(functools.partial(serves, ports[0], f"{greeting}\n"), "the changed file served")
            answers.append((time.perf_counter() - start) * 1000)
            time.sleep(1.0)  # the pass that recreated it has recorded itself
            passes.append(loop.last_pass_ms())
        before = loop.cpu_seconds()
        time.sleep(args.idle)
        idle = (loop.cpu_seconds() - before) / args.idle
    LinuxRuntime(state=state, cache=cache).shutdown()
    shutil.rmtree(state, ignore_errors=True)
    return {
        "answer_ms": statistics.median(answers[1:]),
        "pass_ms": statistics.median(passes[1:]),
        "idle_cpu": idle,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", "--runs", type=int, default=10)
    parser.add_argument("--interval", default="1s")
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--here", type=int, default=10)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parse(parser, runs=2, files=50, here=2, idle=5.0)
    work = Path(tempfile.mkdtemp(prefix="squish-gbench-"))
    cache = work / "cache"
    try:
        found = part_a(args, work, cache)
        many = part_b(args, work, cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"(a) push -> new greeting answered, {args.runs} runs")
    for mode, samples in found.items():
        print(
            f"    {mode:<24} p50 {statistics.median(samples):8.1f} ms   p90 {p90(samples):8.1f} ms"
        )
    print(f"(b) {args.files} files, {args.here} placed here, webhook:")
    print(f"    push -> answered p50 {many['answer_ms']:.1f} ms; the pass {many['pass_ms']:.1f} ms")
    print(f"    idle between revisions: {many['idle_cpu'] * 100:.2f} % of a core")
    out = Results("gitops")
    for mode, samples in found.items():
        out.distribution(f"push -> new greeting answered, {mode}", samples)
    what = f"{args.files} files, {args.here} placed here, webhook"
    out.figure(f"{what}: push -> answered p50", many["answer_ms"], "ms")
    out.figure(f"{what}: the pass p50", many["pass_ms"], "ms")
    out.figure(f"{what}: idle between revisions", many["idle_cpu"] * 100, "% of a core")
    out.save()


if __name__ == "__main__":
    main()
