"""seccomp profiles as data: the structural checks that need no libseccomp, and the one
kernel-version reading that the default rules and ``minKernel`` share."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runtime.security import profile


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6.1.0-18-amd64", (6, 1)),
        ("4.4.0-210-generic", (4, 4)),
        ("5.15.0+", (5, 15)),
        ("4.8", (4, 8)),
        ("5", (5, 0)),
        ("", None),
        ("4.x", None),
        ("v5.10", None),
    ],
)
def test_a_kernel_version_is_read_one_way(text: str, expected: tuple[int, int] | None) -> None:
    assert profile.kernel_version(text) == expected


def test_min_kernel_is_compared_with_the_running_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = os.uname_result(("Linux", "host", "5.10.0-28-amd64", "#1", "x86_64"))
    monkeypatch.setattr(os, "uname", lambda: fake)
    rules = [
        {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "5.10"}},
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "5.11"}},
        {"names": ["gettid"], "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "5.9"}},
    ]
    _, found = profile.parse_profile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
    assert [rule.names for rule in found] == [("getpid",)]
    bad = {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "new"}}
    with pytest.raises(profile.ProfileError, match=r"minKernel 'new' is not a kernel version"):
        profile.parse_profile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [bad]})


@pytest.mark.parametrize("name", ["Getpid", "get pid", "", "getpid\n", "9p", "x" * 65])
def test_a_name_that_cannot_be_a_syscall_is_refused_without_compiling(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / "p.json"
    rule = {"names": ["getcwd", name], "action": "SCMP_ACT_ERRNO"}
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}))
    with pytest.raises(profile.ProfileError, match=r"syscalls\[0\]\.names: .* is not a syscall"):
        profile.read_profile(path)


def test_a_well_formed_name_is_left_to_the_compiler(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    rules = [{"names": ["_llseek", "epoll_pwait2", "frobnicate"], "action": "SCMP_ACT_LOG"}]
    text = json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
    path.write_text(text)
    document, raw = profile.read_profile(path)
    assert raw == text.encode() and document["syscalls"] == rules
