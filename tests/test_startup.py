"""What a command pays before it does anything: the imports, and no program run by them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A child interpreter where asking ldconfig for a library (``ctypes.util.find_library``
# runs ``ldconfig -p``) is an error, so whatever does it on the way is found.
NO_LDCONFIG = textwrap.dedent(
    """
    import ctypes.util

    def refuse(name):
        raise AssertionError(f"find_library({name!r}) runs ldconfig")

    ctypes.util.find_library = refuse
    """
)


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_LDCONFIG + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_importing_the_command_line_runs_no_ldconfig() -> None:
    child = run_child("import reconciler.cli")
    assert child.returncode == 0, child.stderr


def test_compiling_the_default_seccomp_profile_runs_no_ldconfig() -> None:
    child = run_child(
        """
        from runtime.security.seccomp import compile_default

        assert compile_default()
        """
    )
    assert child.returncode == 0, child.stderr


# What only some commands need: downloading (httpx), serving metrics (prometheus_client),
# an Alpine index (yaml), bridge networks' DNS and netlink (dnspython, pyroute2), and
# output for a person (rich: `--json` never needs it).
NOT_AT_START = ("httpx", "prometheus_client", "yaml", "dns", "pyroute2", "rich")


def test_importing_the_command_line_leaves_what_few_commands_need() -> None:
    child = run_child(
        f"""
        import sys

        import reconciler.cli

        loaded = sorted(set({NOT_AT_START!r}) & {{m.split(".")[0] for m in sys.modules}})
        assert not loaded, loaded
        """
    )
    assert child.returncode == 0, child.stderr


# What `reconciler status` answered by the running loop never needs: the models, the
# event loop, the runtime client, the squishfile reader, output for a person.
NOT_TO_ASK = ("pydantic", "anyio", "rich", "runtime.client.linux", "reconciler.cli", "tomli")


def test_the_entry_asks_the_loop_without_the_rest_of_the_command_line() -> None:
    child = run_child(
        f"""
        import sys

        import reconciler.quick

        loaded = {{m for m in sys.modules}}
        found = sorted(m for m in {NOT_TO_ASK!r} if m in loaded)
        assert not found, found
        """
    )
    assert child.returncode == 0, child.stderr


def test_importing_every_module_runs_no_command() -> None:
    """``make test-lowest`` imports every module of the packages; ``reconciler.__main__``
    among them must not run the command line (it printed the usage and exited 2)."""
    child = run_child(
        """
        import importlib, pkgutil
        import reconciler
        for module in pkgutil.walk_packages(reconciler.__path__, "reconciler."):
            importlib.import_module(module.name)
        print("imported")
        """
    )
    assert (child.returncode, child.stdout.strip()) == (0, "imported"), child.stderr
