"""The ``reconciler`` command line.

Until the reconciler loop lands, ``run`` brings up every squishfile of a folder once and
stays in the foreground streaming their logs; containers keep running when it exits.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from reconciler.errors import SquishfileError
from reconciler.squishfile import load_squishfile, validate_files
from runtime.errors import ContainerNotFound, HostSetupError, SquishError
from runtime.interface import ContainerInfo, ContainerState
from runtime.linux import LinuxRuntime
from runtime.spec import ContainerSpec

__all__ = ("main",)

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)


def _squishfiles(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    return sorted(p for p in folder.glob("*.toml") if not p.name.startswith("."))


def _describe_ports(info: ContainerInfo) -> str:
    return ", ".join(f"{p.host_addr}:{p.host}->{p.container}/{p.protocol}" for p in info.ports)


def _up(runtime: LinuxRuntime, spec: ContainerSpec) -> tuple[ContainerInfo, str]:
    """Make the container for ``spec`` run; say what was done."""
    try:
        current = runtime.inspect(spec.name)
    except ContainerNotFound:
        return runtime.run(spec), "created"
    if current.spec != spec:
        runtime.remove(spec.name, force=True)
        return runtime.run(spec), "recreated (spec changed)"
    if current.state is ContainerState.RUNNING:
        return current, "unchanged"
    return runtime.start(spec.name), "started"


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path, error in validate_files([Path(p) for p in args.files]):
        if error is None:
            _out.print(f"[green]ok[/] {path}")
        else:
            failed += 1
            for problem in error.problems:
                _err.print(f"[red]error[/] {escape(str(problem))}", soft_wrap=True)
    return 1 if failed else 0


def cmd_up(args: argparse.Namespace) -> int:
    runtime = LinuxRuntime()
    status = 0
    for file in [Path(f) for f in args.files]:
        try:
            spec = load_squishfile(file).to_spec()
            info, what = _up(runtime, spec)
        except SquishfileError as exc:
            _err.print(f"[red]error[/] {escape(str(exc))}", soft_wrap=True)
            status = 1
            continue
        except SquishError as exc:
            _err.print(f"[red]error[/] {escape(f'{file}: {exc}')}", soft_wrap=True)
            status = 1
            continue
        _out.print(f"{info.name}: {what}; pid {info.pid}; ports {_describe_ports(info) or '-'}")
    return status


def cmd_run(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    files = _squishfiles(folder)
    if not files:
        _err.print(f"no squishfiles (*.toml) in {folder}")
        return 1
    args.files = [str(f) for f in files]
    status = cmd_up(args)
    runtime = LinuxRuntime()
    names = [load_squishfile(f).name for f in files if _loads(f)]
    _out.print("following logs; Ctrl-C stops following (containers keep running)")
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    offsets = dict.fromkeys(names, 0)
    while not stop:
        for name in names:
            offsets[name] = _print_new_log(runtime, name, offsets[name])
        time.sleep(0.2)
    return status


def _loads(file: Path) -> bool:
    try:
        load_squishfile(file)
    except SquishfileError:
        return False
    return True


def _print_new_log(runtime: LinuxRuntime, name: str, offset: int) -> int:
    try:
        data = runtime.logs(name)
    except ContainerNotFound:
        return offset
    for line in data[offset:].decode(errors="replace").splitlines():
        _out.print(f"[cyan]{name}[/] | {escape(line)}", soft_wrap=True)
    return len(data)


def cmd_ps(args: argparse.Namespace) -> int:
    runtime = LinuxRuntime()
    infos = runtime.list()
    if args.json:
        print(json.dumps([i.model_dump(mode="json") for i in infos], indent=2))
        return 0
    table = Table("NAME", "STATE", "PID", "PORTS", "RESTARTS", "EXIT", "AGE")
    now = time.time()
    for info in infos:
        age = f"{now - info.started_at:.0f}s" if info.started_at else "-"
        table.add_row(
            info.name,
            info.state.value,
            str(info.pid or "-"),
            _describe_ports(info) or "-",
            str(info.restarts),
            "-" if info.exit_code is None else str(info.exit_code),
            age,
        )
    _out.print(table)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    info = LinuxRuntime().stop(args.name, timeout=args.time)
    _out.print(f"{info.name}: {info.state.value} (exit code {info.exit_code})")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    LinuxRuntime().remove(args.name, force=args.force)
    _out.print(f"{args.name}: removed")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    runtime = LinuxRuntime()
    offset = 0
    while True:
        data = runtime.logs(args.name)
        sys.stdout.buffer.write(data[offset:])
        sys.stdout.flush()
        offset = len(data)
        if not args.follow or runtime.inspect(args.name).state is not ContainerState.RUNNING:
            return 0
        time.sleep(0.2)


def cmd_inspect(args: argparse.Namespace) -> int:
    print(LinuxRuntime().inspect(args.name).model_dump_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler", description="Rootless containers from TOML squishfiles."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check squishfiles; exit 0 when all are valid")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("up", help="start the containers of these squishfiles")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("run", help="bring up every squishfile of DIR and follow their logs")
    p.add_argument("dir", nargs="?", default="desired")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("ps", help="list containers")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ps)
    p = sub.add_parser("stop", help="stop a container (SIGTERM, then SIGKILL)")
    p.add_argument("name")
    p.add_argument("-t", "--time", type=float, default=None, help="grace period in seconds")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("rm", help="remove a container")
    p.add_argument("name")
    p.add_argument("-f", "--force", action="store_true", help="stop it first if it runs")
    p.set_defaults(func=cmd_rm)
    p = sub.add_parser("logs", help="print a container's output")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("inspect", help="a container as JSON")
    p.add_argument("name")
    p.set_defaults(func=cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except HostSetupError as exc:
        _err.print(f"[red]error[/] {escape(str(exc))}", soft_wrap=True)
        return 1
    except (SquishError, OSError) as exc:
        _err.print(f"[red]error[/] {escape(str(exc))}", soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
