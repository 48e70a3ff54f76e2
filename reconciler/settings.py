"""Every tunable of the reconciler and every ``SQUISH_*`` variable, in one typed record.

:meth:`Settings.from_env` is where the reconciler reads its environment
(``SQUISH_SETTLE_MS``, :attr:`Settings.settle_ms`); the runtime's
variables (``SQUISH_STATE_DIR``, ``SQUISH_CGROUP_DRIVER``, ``SQUISH_CGROUP_ROOT``,
``SQUISH_ALPINE_MIRROR``, ``SQUISH_LAYER_INDEX``; see
:class:`runtime.settings.RuntimeSettings`) become :attr:`Settings.runtime`, handed to
``LinuxRuntime(settings=...)``. Command-line options override the fields they name
(``dataclasses.replace``). The loop and the converger take their values from here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.settings import BadSetting, RuntimeSettings

__all__ = (
    "Backoff",
    "BadSetting",
    "GitSettings",
    "Settings",
    "default_config",
    "parse_interval",
    "parse_labels",
)


@dataclass(frozen=True)
class Backoff:
    """Delays, in seconds. ``failure_*`` after a failed action, ``crash_*`` between restarts."""

    failure_initial: float = 0.005
    """The first delay after a failed action; each failure doubles it."""
    failure_max: float = 30.0
    """The longest delay after failed actions."""
    crash_initial: float = 0.1
    """The first delay before restarting a container whose command exited (``--crash-backoff``)."""
    crash_max: float = 60.0
    """The longest delay between restarts (``--crash-backoff-max``)."""
    crash_reset: float = 60.0
    """A container that ran this long before exiting starts its crash back-off afresh
    (``--crash-backoff-reset``)."""

    def __post_init__(self) -> None:
        for name in ("failure_initial", "failure_max", "crash_initial", "crash_max", "crash_reset"):
            _not_negative(name, getattr(self, name))

    def failure_delay(self, failures: int) -> float:
        return min(self.failure_initial * 2.0 ** max(failures - 1, 0), self.failure_max)

    def crash_delay(self, crashes: int) -> float:
        return min(self.crash_initial * 2.0 ** max(crashes - 1, 0), self.crash_max)


@dataclass(frozen=True)
class GitSettings:
    """A git repository to follow instead of a folder (``reconciler run --git URL``)."""

    url: str
    """Where to fetch from: anything ``git fetch`` takes (``file://``, ``https://``,
    ``ssh://``, ``git://``, a path); the user's own git config and credentials apply."""
    branch: str | None = None
    """The branch to follow (``--branch``); with no branch, tag or rev: the remote's HEAD."""
    tag: str | None = None
    """The tag to apply (``--tag``)."""
    rev: str | None = None
    """The commit to apply (``--rev``; for ``plan``: the revision to compare with)."""
    path: str = ""
    """The folder of squishfiles inside the repository (``--path``; empty: its top)."""
    interval: float = 30.0
    """Seconds between fetches (``--interval``, ``30s``, ``2m``); a poke fetches at once."""
    verify_signatures: bool = False
    """Apply only commits signed by a key of :attr:`allowed_signers`
    (``--verify-signatures``)."""
    allowed_signers: str | None = None
    """An ssh allowed-signers file, as ``gpg.ssh.allowedSignersFile`` (``--allowed-signers``)."""
    timeout: float = 120.0
    """Longest run of one git command, in seconds; a fetch that takes longer fails."""
    host_paths: bool = False
    """Let the repository's files bind host paths outside their checkout and read seccomp
    profiles from there (``--allow-host-paths``); by default they reach only the
    repository: whoever can push to it could otherwise bind the account's home."""

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.branch, self.tag, self.rev)) > 1:
            raise BadSetting("git ref", self.ref, "give one of --branch, --tag, --rev")
        if self.verify_signatures and not self.allowed_signers:
            raise BadSetting("verify_signatures", "true", "needs --allowed-signers FILE")
        if not self.interval > 0:
            raise BadSetting("interval", str(self.interval), "expected more than 0 seconds")
        _not_negative("timeout", self.timeout)

    @property
    def ref(self) -> str:
        """What is followed, as status shows it: ``branch main``, ``tag v1``, ``rev 3f2a``,
        ``HEAD``."""
        for kind in ("branch", "tag", "rev"):
            if (value := getattr(self, kind)) is not None:
                return f"{kind} {value}"
        return "HEAD"


def parse_interval(text: str) -> float:
    """Seconds in ``30s``, ``2m``, ``1h``, ``500ms`` or a plain number of seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = text.strip(), "s"
    for suffix in sorted(units, key=len, reverse=True):
        if number.endswith(suffix):
            number, unit = number[: -len(suffix)], suffix
            break
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise BadSetting("interval", text, "expected a duration such as 30s, 2m or 1h") from None
    if not seconds > 0:
        raise BadSetting("interval", text, "expected more than 0 seconds")
    return seconds


@dataclass(frozen=True)
class Settings:
    """The reconciler's settings; the defaults are what an empty environment and no
    options mean."""

    debounce_ms: int = 200
    """Longest batch of file events, in ms (``--debounce-ms``)."""
    step_ms: int = 5
    """Quiet time that ends a batch of file events, in ms (``--step-ms``). The events are
    waited for, not polled: a short step costs nothing while nothing happens. 5 ms: the
    writes of a git checkout or of a copied folder come closer together than that, so a
    burst is still one pass, while one edit is applied a few ms after it is written."""
    settle_ms: int = 300
    """Quiet time, in ms, that a squishfile rewritten in place (truncated, then written)
    must keep before its new bytes are applied (``--settle-ms``, ``SQUISH_SETTLE_MS``):
    a writer that pauses mid-file must not have its first half applied. A file renamed
    into place is applied at once. 300 ms: an editor's or a script's write of a small
    file ends well within it, and an interactive save still looks immediate."""
    resync: float = 10.0
    """Seconds between passes when nothing happens (``--resync``)."""
    network_linger: float = 60.0
    """Seconds the loop keeps a network the folder made once no container joins it
    (``--network-linger``): a file dropped meanwhile starts on it at once, where making
    the network would come first otherwise (and, for the user's only bridge network,
    starting the shared namespace's keeper: about 150 ms). 0: a network goes with the
    last container that leaves it, as ``apply`` always has it go."""
    retry_failed_pass: float = 1.0
    """Longest wait, in seconds, before a pass that failed as a whole is tried again."""
    rearm_delay: float = 0.5
    """Seconds between attempts to watch a folder that vanished or was replaced."""
    parallel: int = 8
    """Actions of one phase at once (``--parallel``)."""
    backoff: Backoff = field(default_factory=Backoff)
    """Failure and crash back-off."""
    allow_mass_delete: bool = False
    """Apply a pass that removes more than half of the folder's containers, counted over
    :attr:`mass_delete_window` (``--allow-mass-delete``)."""
    mass_delete_window: float = 300.0
    """Seconds over which the mass-deletion guard counts removals (``--mass-delete-window``):
    a pass is held when its removals and those applied within this window before it come
    to more than half of the folder's containers (and to more than two), so files deleted
    one at a time are held too. 0 counts each pass alone."""
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    """The runtime's part: its ``SQUISH_*`` variables."""
    git: GitSettings | None = None
    """The git repository followed (``--git URL`` and its options); None: a folder."""
    host: str = field(default_factory=socket.gethostname)
    """This host's name, which ``[placement]`` hosts patterns match (``--host``)."""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)  # a dict: unhashable
    """This host's labels, which ``[placement]`` labels must match (``--label k=v``)."""

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise BadSetting("parallel", str(self.parallel), "expected at least 1")
        if not self.host or self.host != self.host.strip():
            raise BadSetting("host", self.host, "expected a host name")
        for name in (
            "debounce_ms",
            "step_ms",
            "settle_ms",
            "resync",
            "network_linger",
            "retry_failed_pass",
            "rearm_delay",
            "mass_delete_window",
        ):
            _not_negative(name, getattr(self, name))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings ``environ`` (default: this process's environment) gives.
        :class:`BadSetting` names a variable whose value cannot be used."""
        env = os.environ if environ is None else environ
        settle = env.get("SQUISH_SETTLE_MS") or None  # empty counts as unset
        return cls(
            settle_ms=cls.settle_ms
            if settle is None
            else _milliseconds("SQUISH_SETTLE_MS", settle),
            runtime=RuntimeSettings.from_environ(environ),
        )


def default_config(environ: Mapping[str, str]) -> Path | None:
    """The settings file read when no ``--config`` is given: ``$SQUISH_CONFIG``
    (whether it exists or not), else ``$XDG_CONFIG_HOME/squish/reconciler.toml``
    (``~/.config/...``) when it exists; None when neither applies
    (:mod:`reconciler.configfile` reads it)."""
    named = environ.get("SQUISH_CONFIG") or None
    if named is not None:
        return Path(named).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME", "~"), ".config")
    found = Path(base).expanduser() / "squish" / "reconciler.toml"
    return found if found.is_file() else None


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``["zone=a", "disk=ssd"]`` as ``{"zone": "a", "disk": "ssd"}``; :class:`BadSetting`
    names an item that is not ``KEY=VALUE`` (a key, then ``=``) or a key given twice."""
    labels: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key or key != key.strip():
            raise BadSetting("--label", item, "expected KEY=VALUE, like zone=a")
        if key in labels:
            raise BadSetting("--label", item, f"the label {key} is given twice")
        labels[key] = value
    return labels


def _milliseconds(variable: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadSetting(variable, value, "expected a whole number of milliseconds") from None
    _not_negative(variable, number)
    return number


def _not_negative(name: str, value: float) -> None:
    if not value >= 0:  # NaN too
        raise BadSetting(name, str(value), "expected a number, 0 or more")
