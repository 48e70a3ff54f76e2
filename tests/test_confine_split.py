"""The confinement in two steps (``runtime.sandbox.confine``): what leaves the caller the
capabilities it uses, taken by a warm init while idle (``narrow``), then the rest once the
container is assembled (``seal``); together they are ``apply``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.sandbox import confine
from runtime.sandbox.capabilities import CAPABILITY_NUMBERS, DEFAULT_CAPABILITIES
from tests.support import in_own_namespaces

_DOCKER = sum(1 << CAPABILITY_NUMBERS[name] for name in DEFAULT_CAPABILITIES)


def _status() -> dict[str, int]:
    fields = ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs")
    lines = Path("/proc/self/status").read_text().splitlines()
    pairs = (line.split(":\t") for line in lines)
    return {key: int(value, 16) for key, value in pairs if key in fields}


def test_narrowed_the_caller_keeps_every_capability_it_has_until_sealed() -> None:
    def steps() -> dict[str, Any]:
        before = _status()
        confine.narrow(confine.last_capability())
        narrowed = _status()
        confine.seal(None)
        return {"before": before, "narrowed": narrowed, "sealed": _status()}

    seen = in_own_namespaces(steps)
    before, narrowed, sealed = seen["before"], seen["narrowed"], seen["sealed"]
    assert before["CapEff"] & ~_DOCKER  # e.g. CAP_SYS_ADMIN, which mounts need
    assert narrowed["CapEff"] == before["CapEff"]
    assert narrowed["CapPrm"] == before["CapPrm"]
    assert (narrowed["CapBnd"], narrowed["CapAmb"], narrowed["NoNewPrivs"]) == (_DOCKER, 0, 1)
    assert (sealed["CapEff"], sealed["CapPrm"], sealed["CapBnd"]) == (_DOCKER,) * 3
