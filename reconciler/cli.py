"""The ``reconciler`` command line.

Folder commands: ``run`` (the controller loop), ``apply``, ``plan``, ``status`` (``--watch``
and ``events``: :mod:`reconciler.watching`), ``down``;
file commands: ``validate``; container commands: ``logs``, ``ps``, ``inspect``, ``stop``,
``rm``; for editors and shells: ``schema``, ``completion`` (:mod:`reconciler.editors`);
``service`` (a systemd user unit for ``run``). The README has a tour.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from reconciler.configfile import ConfigError, apply_file, config_path
from reconciler.control.converge import Converger
from reconciler.control.journal import Journal, journal_path
from reconciler.control.loop import PassResult, Reconciler, run_loop
from reconciler.control.prepare import Preparer
from reconciler.control.status import (
    ConditionReport,
    FolderBusy,
    StatusStore,
    Writer,
    status_document,
)
from reconciler.desired.folder import FileCache
from reconciler.desired.git import GitSource
from reconciler.desired.gitrepo import GitError
from reconciler.desired.source import FolderSource, Source
from reconciler.desired.types import Skipped, network_files_in, skipped_in, squishfiles_in
from reconciler.desired.validation import privileged_ports, validate_files
from reconciler.editors import (
    add_editor_commands,
    complete,
    folder_argument,
    name_argument,
    paths_argument,
)
from reconciler.gitops import (
    add_git_options,
    add_suspend_commands,
    first_fetch,
    git_settings,
    previewing,
    source_line,
)
from reconciler.planning.conflicts import Holding, holders_of
from reconciler.planning.networks import network_managed_by
from reconciler.planning.plan import ConditionKind, Plan, is_managed_by
from reconciler.prereqs import HostNotReady, check_once
from reconciler.quick import ask_loop
from reconciler.service import ServiceError, add_service_commands
from reconciler.settings import BadSetting, Settings, parse_labels
from reconciler.terminal import LazyConsole, escape
from reconciler.watching import (
    add_events_options,
    add_watch_options,
    print_events,
    watch_json,
    watch_status,
)
from runtime.api import ContainerInfo
from runtime.client.host import host_checks
from runtime.client.linux import LinuxRuntime
from runtime.errors import HostSetupError, SquishError
from runtime.network.ports import unprivileged_port_start
from runtime.security.seccomp import compile_profile

if TYPE_CHECKING:
    from rich.table import Table

    from reconciler.endpoint.local import StatusSocket
    from reconciler.endpoint.server import Endpoint

__all__ = ("build_parser", "main")

log = logging.getLogger(__name__)

_out = LazyConsole(highlight=False, soft_wrap=True)
_err = LazyConsole(stderr=True, highlight=False, soft_wrap=True)
"""Lines are never wrapped by the program (a terminal wraps them itself; a pipe keeps
each line whole); tables go through :func:`_print_table`."""

_DEFAULT_DIR = "desired"


def _describe_ports(info: ContainerInfo) -> str:
    return ", ".join(str(p) for p in info.ports)


_OPTIONS = (
    "resync",
    "network_linger",
    "debounce_ms",
    "step_ms",
    "settle_ms",
    "parallel",
    "allow_mass_delete",
    "mass_delete_window",
    "host",
)
"""Options that override the :class:`Settings` field of the same name."""
_BACKOFF_OPTIONS = {
    "crash_backoff": "crash_initial",
    "crash_backoff_max": "crash_max",
    "crash_backoff_reset": "crash_reset",
}
"""Options that override a :class:`Backoff` field."""


def _settings(args: argparse.Namespace | None = None) -> Settings:
    """The environment's settings, with the options given on the command line."""
    settings = Settings.from_env()
    if args is None:
        return settings
    config = config_path(getattr(args, "config", None))
    if config is not None:
        settings = apply_file(settings, config)
    given = {name: value for name in _OPTIONS if (value := getattr(args, name, None)) is not None}
    backoff = {
        field: value
        for option, field in _BACKOFF_OPTIONS.items()
        if (value := getattr(args, option, None)) is not None
    }
    if getattr(args, "label", None):
        given["labels"] = parse_labels(args.label)
    return dataclasses.replace(
        settings,
        **given,
        backoff=dataclasses.replace(settings.backoff, **backoff),
        git=git_settings(args, settings),
    )


def _runtime(settings: Settings | None = None, *, first_use: bool = True) -> LinuxRuntime:
    """The runtime; at this account's first use, once the host's prerequisites are checked
    (``make check``'s list: :func:`reconciler.prereqs.check_once`)."""
    if first_use:
        check_once()
    return LinuxRuntime(settings=(settings or _settings()).runtime)


class NoFolder(Exception):
    """The folder a command was given is not there (or is not a folder)."""


def _existing(folder: Path) -> Path:
    """``folder``, which must be a folder now (a folder that vanishes later is waited for)."""
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise NoFolder(f"{os.path.abspath(folder)}: {what}")
    return folder


def _reconciler(
    folder: Path,
    settings: Settings,
    writer: Writer = "loop",
    *,
    runtime: LinuxRuntime | None = None,
    files: FileCache | None = None,
) -> Reconciler:
    """``folder``'s reconciler; ``runtime`` and ``files`` (its folder's parsed files)
    are the loop's when it answers ``status`` (:func:`_status_socket`)."""
    if settings.git is None:
        folder = _existing(folder)  # before the runtime, which may refuse to start
    runtime = runtime or _runtime(settings)
    # the status socket's files (``files``) answer as a fresh load would: a broken file
    # claims no name the cache remembers
    source: Source = (
        FolderSource(
            folder, settings, _files={} if files is None else files, recall_names=files is None
        )
        if settings.git is None
        else _git_source(settings, runtime)
    )
    return Reconciler(
        source=source,
        runtime=runtime,
        converger=Converger(runtime, limit=settings.parallel, backoff=settings.backoff),
        store=StatusStore(runtime.state, source.folder),
        allow_mass_delete=settings.allow_mass_delete,
        mass_delete_window=settings.mass_delete_window,
        network_linger=settings.network_linger if writer == "loop" else 0.0,
        writer=writer,
        preparer=Preparer(runtime),
    )


_UNBOUNDED = 1 << 20
"""A width no table reaches: measuring against it gives a table's natural width."""


def _print_table(table: Table, *, wide: bool = False) -> None:
    """On a terminal a table fits the terminal's width (long cells are cut) unless
    ``wide``; anywhere else (a pipe, a file, CI logs) and with ``wide``, every value is
    printed whole, however wide the table gets."""
    if _out.is_terminal and not wide:
        _out.print(table)
        return
    from rich.console import Console

    natural = _out.measure(table, options=_out.options.update_width(_UNBOUNDED)).maximum
    whole = Console(
        file=_out.file,
        width=max(natural, 1),
        highlight=False,
        force_terminal=_out.is_terminal,
        color_system=_out.color_system,
    )
    whole.print(table)


def _print_plan(todo: Plan) -> None:
    for action in todo.actions:
        _out.print(f"  {escape(str(action))}", soft_wrap=True)
    for condition in todo.conditions:
        _out.print(
            f"  [yellow]{condition.kind.value}[/] {escape(condition.name)}: "
            f"{escape(condition.message)}",
            soft_wrap=True,
        )


# -- folder commands ----------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    reconciler = _reconciler(_folder(args), settings)
    assert reconciler.store is not None
    endpoint = _endpoint(args, settings, reconciler)
    reconciler.store.claim(reconciler.writer)
    first_fetch(reconciler.source)
    journal = Journal(journal_path(reconciler.store), folder=str(reconciler.folder))
    on_pass = _both(pass_printer(str(reconciler.folder)), journal.passed)
    if endpoint is not None:
        on_pass = endpoint.also(on_pass)

    async def main() -> None:
        stop = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(_stop_on_signal, stop)
            with endpoint or nullcontext():
                await run_loop(
                    reconciler,
                    settings=settings,
                    on_pass=on_pass,
                    stop=stop,
                    on_ready=endpoint.on_ready if endpoint else None,
                    on_failed=journal.pass_failed,
                )
            group.cancel_scope.cancel()

    folder = escape(str(reconciler.folder))
    if endpoint is not None:
        _out.print(f"serving /status and /metrics on {escape(args.listen)}")
    _out.print(f"reconciling {folder}; Ctrl-C stops the loop (containers keep running)")
    # Entered at once: whatever fails from here on, the socket goes with its thread.
    with _status_socket(reconciler) or nullcontext():
        journal.started(os.getpid())
        try:
            anyio.run(main)
        finally:
            journal.stopped()
    _out.print("stopped; the containers keep running")
    return 0


def _both(
    first: Callable[[PassResult], None], then: Callable[[PassResult], None]
) -> Callable[[PassResult], None]:
    def on_pass(result: PassResult) -> None:
        first(result)
        then(result)

    return on_pass


def _endpoint(
    args: argparse.Namespace, settings: Settings, reconciler: Reconciler
) -> Endpoint | None:
    """``--listen``'s endpoint, bound (None without ``--listen``); its ``/status`` is
    ``status --json``'s document."""
    if args.listen is None:
        if args.webhook_secret_file or args.listen_any:
            given = "--webhook-secret-file" if args.webhook_secret_file else "--listen-any"
            raise BadSetting(given, args.webhook_secret_file or "", "needs --listen ADDRESS:PORT")
        return None
    from reconciler.endpoint.address import parse_listen  # the HTTP side: only `run --listen`
    from reconciler.endpoint.server import Endpoint, read_secret

    return Endpoint(
        parse_listen(args.listen, any_address=args.listen_any),
        document=lambda: status_json(_reconciler(_folder(args), settings)),
        source=reconciler.source,
        secret=read_secret(Path(args.webhook_secret_file)) if args.webhook_secret_file else None,
    )


def _status_socket(reconciler: Reconciler) -> StatusSocket | None:
    """The socket on which the loop answers ``status`` (:mod:`reconciler.endpoint.local`)
    for a folder source, or None (a git source; a socket that cannot be made is said and
    done without: ``status`` then works the document out itself)."""
    from reconciler.endpoint.local import StatusSocket

    if not isinstance(reconciler.source, FolderSource) or reconciler.store is None:
        return None
    assert isinstance(reconciler.runtime, LinuxRuntime)
    runtime, folder = reconciler.runtime, reconciler.folder
    linger = reconciler.network_linger
    files: FileCache = {}

    def document(host: str, labels: Mapping[str, str]) -> dict[str, Any]:
        """What a fresh ``status --host HOST --label ...`` would print: its settings
        (no settle time: it has no cache to wait in), the loop's runtime and files, and
        the loop's network linger (``run --network-linger``: a network the loop removes
        is not said to be kept)."""
        settings = dataclasses.replace(
            Settings.from_env(),
            host=host,
            labels=dict(labels),
            settle_ms=0,
            network_linger=linger,
        )
        return status_json(_reconciler(folder, settings, runtime=runtime, files=files))

    try:
        return StatusSocket(reconciler.store.socket, folder, document)
    except OSError as exc:
        log.warning("status is not answered by this loop: %s: %s", reconciler.store.socket, exc)
        return None


def pass_printer(folder: str) -> Callable[[PassResult], None]:
    """What the loop prints after each pass: a line per action (and why it failed), and
    the conditions (rejected files, conflicts, guard holds) once as they appear, change
    or clear, not once per pass."""
    report = ConditionReport(folder)

    def on_pass(result: PassResult) -> None:
        for outcome in result.outcomes:
            failed = "" if outcome.ok else f" [red]failed:[/] {escape(outcome.error or '')}"
            _out.print(f"{escape(str(outcome.action))}{failed}")
        for line in report.changes(result.plan.conditions):
            _out.print(f"[yellow]{escape(line)}[/]")

    return on_pass


async def _stop_on_signal(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


def cmd_apply(args: argparse.Namespace) -> int:
    reconciler = _reconciler(_folder(args), _settings(args), writer="apply")
    assert reconciler.store is not None
    reconciler.store.claim(reconciler.writer)
    first_fetch(reconciler.source)
    reconciler.record.started(os.getpid())
    result = anyio.run(reconciler.reconcile, "apply")
    for outcome in result.outcomes:
        mark = "[green]done[/]" if outcome.ok else f"[red]failed[/]: {escape(outcome.error or '')}"
        _out.print(f"  {escape(str(outcome.action))}: {mark}", soft_wrap=True)
    _, _, left = reconciler.dry_run()
    if result.failed or left.actions or left.conditions:
        _err.print("[red]not converged[/]:")
        _print_plan(left)
        return 1
    _out.print("converged")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    reconciler = _reconciler(_folder(args), _settings(args))
    reconciler.network_linger = 0.0  # what apply would do: remove an unjoined network
    with previewing(reconciler.source):
        _, _, todo = reconciler.dry_run()
    if not todo.actions and not todo.conditions:
        _out.print("no changes: the containers match the folder")
        return 0
    _print_plan(todo)
    waiting = (ConditionKind.BACK_OFF, ConditionKind.PORT_SWAP)  # waiting is fine
    if any(c.kind not in waiting for c in todo.conditions):
        return 1
    return 2 if todo.actions else 0


def status_json(reconciler: Reconciler) -> dict[str, Any]:
    """What ``status --json`` prints (and ``run --listen`` serves at ``/status``)."""
    desired, actual, todo = reconciler.dry_run()
    assert reconciler.store is not None
    return status_document(
        desired,
        actual,
        todo,
        reconciler.store.read(),
        networks=reconciler.networks,
        source=reconciler.source,
    )


def _status_of(reconciler: Reconciler, settings: Settings) -> dict[str, Any]:
    """The status document from the folder's running loop (:mod:`reconciler.quick`),
    else worked out here."""
    asked = None
    if settings.git is None and reconciler.store is not None:
        store = reconciler.store
        asked = ask_loop(store.state, reconciler.folder, settings.host, settings.labels)
    return asked if asked is not None else status_json(reconciler)


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch_status(args)
    settings = _settings(args)
    document = _status_of(_reconciler(_folder(args), settings), settings)
    if args.json or args.output == "json":
        print(json.dumps(document, indent=2))
        return 0
    print_status(document, wide=args.output == "wide")
    return 0


def _watch_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    reconciler = _reconciler(_folder(args), settings)
    if args.json or args.output == "json":
        watch_json(lambda: _status_of(reconciler, settings), interval=args.interval)
        return 0
    watch_status(
        lambda: _status_of(reconciler, settings),
        status_parts,
        printed=functools.partial(print_status, wide=args.output == "wide"),
        interval=args.interval,
    )
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    """Follow the journal of the folder's loop (started before or after this command)."""
    reconciler = _reconciler(_folder(args), _settings(args))
    assert reconciler.store is not None
    return print_events(journal_path(reconciler.store), as_json=args.json, history=args.all)


def _when(at: float, now: float) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))} ({now - at:.0f} s ago)"


def _loop_line(document: dict[str, Any], now: float) -> str:
    loop = document["loop"]
    if loop["running"]:
        ago = now - (loop["last_pass_at"] or now)
        return (
            f"loop: running (pid {loop['pid']}), {loop['passes']} passes, the last "
            f"{ago:.1f} s ago took {loop['last_pass_ms']} ms "
            f"({escape(str(loop['last_trigger']))})"
        )
    line = "loop: not running (`reconciler run` starts it)"
    recorded = document["recorded"]
    if recorded and recorded.get("at") is not None:
        by = "the loop" if recorded.get("by") == "loop" else "`reconciler apply`"
        line += f"; errors and crash loops as {by} last recorded them, {_when(recorded['at'], now)}"
    return line


def _row_message(row: dict[str, Any]) -> str:
    """The last column: how it exited (when it is not running), its last error, and its
    conditions."""
    parts = []
    if row["exit_code"] is not None and row["phase"] != "Running":
        parts.append(f"exit code {row['exit_code']}")
    if row["last_error"]:
        parts.append(row["last_error"])
    parts += [c["message"] for c in row["conditions"]]
    if str(row.get("proc_view") or "").startswith("unavailable"):
        parts.append(f"/proc view {row['proc_view']} (it sees the host's figures)")
    return "; ".join(parts)


def print_status(document: dict[str, Any], *, wide: bool = False) -> None:
    """The ``status`` table of a :func:`status_document`."""
    from rich.table import Table

    for part in status_parts(document, time.time()):
        if isinstance(part, Table):
            _print_table(part, wide=wide)
        else:
            _out.print(part)


def status_parts(document: dict[str, Any], now: float) -> list[str | Table]:
    """What ``status`` shows of a :func:`status_document` at ``now``: lines (rich
    markup) and tables, in order."""
    parts: list[str | Table] = [_loop_line(document, now)]
    if "source" in document:
        parts.append(escape(source_line(document["source"])))
    parts.append(_container_table(document["containers"]))
    if document["networks"]:
        parts.append(_network_table(document["networks"]))
    parts += [f"[yellow]{c['kind']}[/]: {escape(c['message'])}" for c in document["conditions"]]
    parts += [
        f"[yellow]skipped[/] {escape(skipped['file'])}: {escape(skipped['reason'])}"
        for skipped in document["skipped"]
    ]
    parts += [
        f"placed elsewhere {escape(placed['file'])}: {escape(placed['reason'])}"
        for placed in document["placed_elsewhere"]
    ]
    return parts


def _container_table(rows: Sequence[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(
        "NAME",
        "FILE",
        "PHASE",
        "PID",
        "PORTS",
        "ADDRESSES",
        "RESTARTS",
        "AGE",
        "SYNC",
        "LAST ERROR",
    )
    for row in rows:
        table.add_row(
            escape(row["name"]),
            escape(row["file"] or "-"),
            row["phase"],
            str(row["pid"] or "-"),
            ", ".join(row["ports"]) or "-",
            escape(_pairs(row["addresses"])),
            str(row["restarts"]),
            f"{row['age_s']:.0f}s" if row["age_s"] is not None else "-",
            "yes" if row["in_sync"] else "no",
            escape(_row_message(row)),
        )
    return table


def _pairs(named: dict[str, str]) -> str:
    """``default=10.89.1.2, back=10.89.3.2``, or ``-``."""
    return ", ".join(f"{name}={value}" for name, value in named.items()) or "-"


def _network_table(rows: Sequence[dict[str, Any]]) -> Table:
    """The folder's networks (status' ``networks``); their conditions are printed below."""
    from rich.table import Table

    table = Table("NETWORK", "FILE", "STATE", "SUBNET", "INTERNAL", "DNS", "CONTAINERS")
    for row in rows:
        table.add_row(
            escape(row["name"]),
            escape(row["file"] or "-"),
            row["state"],
            row["subnet"] or "-",
            "yes" if row["internal"] else "no",
            "yes" if row["dns"] else "no",
            escape(_pairs(row["containers"])),
        )
    return table


def _folder(args: argparse.Namespace) -> Path:
    return Path(args.dir or _DEFAULT_DIR)


def cmd_down(args: argparse.Namespace) -> int:
    settings = _settings(args)
    runtime = _runtime(settings)
    if settings.git is None:
        folder = str(Path(os.path.abspath(_folder(args))))
    else:
        folder = str(GitSource(settings, runtime.state).folder)
    removed = 0
    for info in runtime.list():
        if is_managed_by(info, folder):
            runtime.remove(info.name, force=True)
            _out.print(f"{info.name}: removed")
            removed += 1
    if not removed:
        _out.print(f"no containers of {escape(folder)}")
    for network in runtime.list_networks():
        if network_managed_by(network, folder):
            runtime.remove_network(network.name)
            _out.print(f"network {network.name}: removed")
    return 0


def _git_source(settings: Settings, runtime: LinuxRuntime) -> GitSource:
    """The git source of ``settings``; the revisions its containers' binds are in stay."""
    source = GitSource(settings, runtime.state)
    folder = str(source.folder)

    def in_use() -> list[str]:
        ours = (info for info in runtime.list() if is_managed_by(info, folder))
        return [bind.source for info in ours for bind in info.spec.binds]

    source.in_use = in_use
    return source


def _squishfiles(arguments: Sequence[str]) -> tuple[list[Path], list[Skipped]]:
    """Files as given; a folder stands for the squishfiles in it, in name order, and
    names the entries the reconciler would skip."""
    paths: list[Path] = []
    skipped: list[Skipped] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            paths += sorted([*squishfiles_in(path), *network_files_in(path)])
            skipped += skipped_in(path)
        else:
            paths.append(path)
    return paths, skipped


def _running_holders(paths: Sequence[Path]) -> dict[str, Holding]:
    """The running containers made from the files' folders, when this account has any:
    they keep the names and ports they hold, as in ``plan``."""
    folders = {os.path.abspath(path.parent) for path in paths}
    try:
        found = _runtime(first_use=False).list()
    except (SquishError, OSError, BadSetting):  # as root, or no usable state: files alone
        return {}
    return holders_of({i.name: i for i in found if any(is_managed_by(i, f) for f in folders)})


def cmd_validate(args: argparse.Namespace) -> int:
    paths, skipped = _squishfiles(args.files)
    for entry in skipped:
        _err.print(
            f"[yellow]skipped[/] {escape(str(entry.file))}: {escape(entry.reason)}",
            soft_wrap=True,
        )
    failed = len(skipped)
    if not paths:
        _err.print(f"[red]error[/] no squishfile (*.toml) in {escape(' '.join(args.files))}")
        return 1
    warnings = privileged_ports(paths, unprivileged_port_start())
    for path, error in validate_files(
        paths, _running_holders(paths), check_profile=compile_profile
    ):
        if error is None:
            _out.print(f"[green]ok[/] {escape(str(path))}", soft_wrap=True)
        else:
            failed += 1
            for problem in error.problems:
                _err.print(f"[red]error[/] {escape(str(problem))}", soft_wrap=True)
        for problem in warnings.get(path, ()):
            _err.print(f"[yellow]warning[/] {escape(str(problem))}", soft_wrap=True)
    return 1 if failed else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Every prerequisite of the host, each missing one with its fix; exit 1 when a
    required one is missing."""
    checks = host_checks(_settings().runtime)
    for check in checks:
        if check.problem is None:
            _out.print(f"[green]ok[/] {escape(check.what)}", soft_wrap=True)
            continue
        mark = "[red]missing[/]" if check.required else "[yellow]limited[/]"
        _out.print(f"{mark} {escape(check.what)}: {escape(check.problem)}", soft_wrap=True)
        _out.print(f"  fix: {escape(check.fix)}", soft_wrap=True)
    return 1 if any(c.problem is not None and c.required for c in checks) else 0


def cmd_fleet_status(args: argparse.Namespace) -> int:
    """Each host's containers and revision; exit 1 when a host is behind or unreachable."""
    from reconciler import fleet  # httpx and its CLI: only this command asks other hosts

    report = anyio.run(functools.partial(fleet.gather, args.urls, per_host=args.timeout))
    if args.json or args.output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_table(fleet.fleet_table(report), wide=args.output == "wide")
        for line in report.problems():
            _err.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)
    return 1 if report.problems() else 0


# -- container commands -------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace) -> int:
    """Copy the log to stdout a chunk at a time; ``-f`` follows it like ``tail -F``."""
    for chunk in _runtime().stream_logs(args.name, follow=args.follow):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    infos = _runtime().list()
    if args.json:
        print(json.dumps([i.model_dump(mode="json") for i in infos], indent=2))
        return 0
    from rich.table import Table

    table = Table("NAME", "STATE", "PID", "PORTS", "RESTARTS", "EXIT", "OOM", "AGE")
    now = time.time()
    for info in infos:
        table.add_row(
            info.name,
            "paused" if info.paused else info.state.value,
            str(info.pid or "-"),
            _describe_ports(info) or "-",
            str(info.restarts),
            "-" if info.exit_code is None else str(info.exit_code),
            str(info.oom_kills),
            f"{now - info.started_at:.0f}s" if info.started_at else "-",
        )
    _print_table(table, wide=args.output == "wide")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    print(_runtime().inspect(args.name).model_dump_json(indent=2))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    info = _runtime().stop(args.name, timeout=args.time)
    _out.print(f"{info.name}: {info.state.value} (exit code {info.exit_code})")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not argv:
        _err.print("[red]error[/] exec needs a command: reconciler exec NAME -- COMMAND [ARG...]")
        return 2
    result = _runtime().exec_command(args.name, argv, timeout=args.timeout)
    sys.stdout.write(result.output)
    if result.timed_out:
        _err.print(f"[red]killed[/] after {args.timeout} s (exit code {result.exit_code})")
    return result.exit_code


def cmd_pause(args: argparse.Namespace) -> int:
    runtime = _runtime()
    info = runtime.pause(args.name) if args.command == "pause" else runtime.resume(args.name)
    _out.print(f"{info.name}: {'paused' if info.paused else 'running'}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    _runtime().remove(args.name, force=args.force)
    _out.print(f"{args.name}: removed")
    return 0


def _tuning(command: argparse.ArgumentParser) -> None:
    """Options of the commands that converge; unset, the settings' defaults hold."""
    defaults = Settings()
    command.add_argument(
        "--allow-mass-delete",
        action="store_true",
        default=None,
        help="apply a pass that removes more than half of the folder's containers",
    )
    command.add_argument(
        "--mass-delete-window",
        type=float,
        metavar="SECONDS",
        help="count removals over this many seconds for the mass-deletion guard "
        f"(default {defaults.mass_delete_window:g}; 0: each pass alone)",
    )
    command.add_argument(
        "--parallel", type=int, help=f"actions at once (default {defaults.parallel})"
    )
    command.add_argument(
        "--crash-backoff",
        type=float,
        help=f"first delay before a restart (s, default {defaults.backoff.crash_initial})",
    )
    command.add_argument(
        "--crash-backoff-max",
        type=float,
        help=f"longest delay between restarts (s, default {defaults.backoff.crash_max})",
    )
    command.add_argument(
        "--crash-backoff-reset",
        type=float,
        help="running this long resets the crash back-off "
        f"(s, default {defaults.backoff.crash_reset})",
    )


def _timing(command: argparse.ArgumentParser) -> None:
    """Options of the loop's timing; unset, the settings' defaults hold."""
    defaults = Settings()
    command.add_argument(
        "--resync", type=float, help=f"seconds between full resyncs (default {defaults.resync})"
    )
    command.add_argument(
        "--debounce-ms",
        type=int,
        help=f"longest event batch (ms, default {defaults.debounce_ms})",
    )
    command.add_argument(
        "--step-ms", type=int, help=f"quiet that ends a batch (ms, default {defaults.step_ms})"
    )
    command.add_argument(
        "--settle-ms",
        type=int,
        help="quiet a file rewritten in place needs before it is applied "
        f"(ms, default {defaults.settle_ms})",
    )
    command.add_argument(
        "--network-linger",
        type=float,
        metavar="SECONDS",
        help="keep a network the folder made this long once nothing joins it "
        f"(default {defaults.network_linger:g}; 0: it goes with its last container)",
    )


def _placement(command: argparse.ArgumentParser) -> None:
    """Who this host is, for the squishfiles' ``[placement]``."""
    command.add_argument(
        "--host", metavar="NAME", help="this host's name for [placement] (default: hostname)"
    )
    command.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="a label of this host for [placement] (repeatable)",
    )


def _listening(command: argparse.ArgumentParser) -> None:
    """``run``'s HTTP endpoint (docs/reconciler.md, "The HTTP endpoint")."""
    command.add_argument(
        "--listen",
        metavar="ADDRESS:PORT",
        help="serve /status, /metrics (and webhooks) on 127.0.0.1:PORT or [::1]:PORT",
    )
    command.add_argument(
        "--listen-any",
        action="store_true",
        help="let --listen use an address that is not loopback (no TLS: put a proxy in front)",
    )
    command.add_argument(
        "--webhook-secret-file",
        metavar="FILE",
        help="serve POST /hooks/github and /hooks/gitea, signed with the secret in FILE",
    )


def _run_options(command: argparse.ArgumentParser) -> None:
    """``run``'s options (``service install`` takes them too, for the unit's ``run``)."""
    _placement(command)
    _timing(command)
    _tuning(command)
    add_git_options(command, loop=True)
    _listening(command)


def _output(command: argparse.ArgumentParser, *formats: str) -> None:
    """``-o wide``: on a terminal too, tables show every value whole (off a terminal
    they always do)."""
    command.add_argument(
        "-o",
        "--output",
        choices=("wide", *formats),
        help="wide: never cut a value to fit the terminal"
        + ("; json: as --json" if "json" in formats else ""),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler", description="Rootless containers reconciled from TOML squishfiles."
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more diagnostics (-vv: debug)"
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file ([git], [host]; default $SQUISH_CONFIG, else "
        "~/.config/squish/reconciler.toml if it exists); options given win",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def folder_command(name: str, help: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help)
        folder_argument(command, f"default: {_DEFAULT_DIR}")
        return command

    p = folder_command("run", "watch DIR and keep the containers matching it")
    _run_options(p)
    p.set_defaults(func=cmd_run)
    p = folder_command("apply", "converge DIR once; exit 0 when converged")
    _placement(p)
    _tuning(p)
    add_git_options(p)
    p.set_defaults(func=cmd_apply)
    p = folder_command("plan", "what apply would do: exit 0 none, 2 pending, 1 errors")
    _placement(p)
    add_git_options(p)
    p.set_defaults(func=cmd_plan)
    p = folder_command("status", "desired vs actual per container, and the loop's state")
    _placement(p)
    add_git_options(p)
    p.add_argument("--json", action="store_true", help="stable machine-readable output")
    _output(p, "json")
    add_watch_options(p)
    p.set_defaults(func=cmd_status)
    p = folder_command("events", "follow what DIR's loop does: actions, failures, conditions")
    add_git_options(p)
    add_events_options(p)
    p.set_defaults(func=cmd_events)
    p = folder_command("down", "remove the containers DIR's reconciler made")
    add_git_options(p)
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("fleet", help="several hosts following one folder")
    p = p.add_subparsers(dest="fleet_command", required=True).add_parser(
        "status", help="each host's containers and revision; exit 1 when one is behind"
    )
    p.add_argument("urls", nargs="+", metavar="URL", help="http://HOST:PORT or file://PATH")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per host (default 5)")
    p.add_argument("--json", action="store_true", help="stable machine-readable output")
    _output(p, "json")
    p.set_defaults(func=cmd_fleet_status)
    p = sub.add_parser(
        "validate", help="check squishfiles (files, or folders of them); exit 0 when all are valid"
    )
    paths_argument(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("doctor", help="check this host's prerequisites; print the fix of each")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser(
        "logs", help="a container's stdout and stderr (the files kept, oldest first)"
    )
    name_argument(p, _container_names)
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then follow it, across rotations, until it exits",
    )
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("ps", help="every container of this user")
    p.add_argument("--json", action="store_true")
    _output(p)
    p.set_defaults(func=cmd_ps)
    p = sub.add_parser("inspect", help="one container as JSON")
    name_argument(p, _container_names)
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("stop", help="stop a container (SIGTERM, then SIGKILL)")
    name_argument(p, _container_names)
    p.add_argument("-t", "--time", type=float, default=None, help="grace period in seconds")
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser(
        "exec", help="run a command inside a running container; exit with its exit code"
    )
    name_argument(p, _container_names)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    p.add_argument(
        "-t", "--timeout", type=float, default=10.0, help="kill it after this many seconds"
    )
    p.set_defaults(func=cmd_exec)
    for verb, what in (("pause", "freeze"), ("unpause", "thaw")):
        p = sub.add_parser(verb, help=f"{what} every process of a container (cgroup v2)")
        name_argument(p, _container_names)
        p.set_defaults(func=cmd_pause)
    p = sub.add_parser("rm", help="remove a container")
    name_argument(p, _container_names)
    p.add_argument("-f", "--force", action="store_true", help="stop it first if it runs")
    p.set_defaults(func=cmd_rm)
    add_suspend_commands(sub, lambda: _runtime().state)
    add_editor_commands(sub)
    add_service_commands(sub, _run_options)
    return parser


def _container_names() -> list[str]:
    return [info.name for info in _runtime().list()]


def _configure_logging(verbose: int) -> None:
    """Diagnostics go through ``logging``, to stderr; the command's own output (tables,
    JSON, plans) is printed. Warnings by default, ``-v`` adds info, ``-vv`` debug."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    complete(parser)
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except (
        HostSetupError,
        SquishError,
        OSError,
        FolderBusy,
        BadSetting,
        NoFolder,
        GitError,
        ConfigError,
        ServiceError,
        HostNotReady,
    ) as exc:
        _err.print(f"[red]error[/] {escape(str(exc))}", soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
