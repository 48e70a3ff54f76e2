#!/usr/bin/env bash
# The floors check: install exactly the lowest versions pyproject.toml allows for each of
# squish's own dependencies ([project] dependencies, each pinned to its `>=` floor), then
# import every module and run the quick tests: the planner, converge, the squishfile,
# settings, sources, conflicts, the drivers' seams and the Runtime contract suite (whose
# real-container half, and a few tests of the conflicts, run too when the account can run
# containers, as under make). It fails when a floor is too low for an API the code uses
# (e.g. anyio.wait_readable needs anyio 4.7).
#
#   scripts/lowest-deps.sh        (from the project folder; `make test-lowest` runs it)
#
# The test tools (pytest and its plugins, hypothesis) are not floors: they come at their
# newest versions. The virtualenv lives in .venv/lowest and is rebuilt only when the
# floors change; a first run downloads from PyPI (about 30 s), a rerun takes about 10 s.
set -euo pipefail

say() { printf 'test-lowest: %s\n' "$*"; }

PYTHON="${PYTHON:-/usr/bin/python3}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV="${LOWEST_VENV:-.venv/lowest}"
PURE_TESTS=(
    tests/test_plan.py tests/test_converge.py tests/test_squishfile.py tests/test_tomlpos.py
    tests/test_desired.py tests/test_loop.py tests/test_validate_cli.py tests/test_fetch.py
    tests/test_rootfs.py tests/test_extract.py tests/test_systemd_driver.py
    tests/test_settings.py tests/test_source.py tests/test_conflicts.py tests/test_cgroup_driver.py
    tests/test_network_driver.py tests/test_security_profile.py tests/test_runtime_contract.py
    tests/test_completion.py tests/test_events.py
)

# Each dependency at its floor. The interpreter's own tomllib reads pyproject.toml here:
# this runs before any of the project's packages are installed.
pins="$("$PYTHON" - <<'EOF'
import re
import sys
import tomllib

with open("pyproject.toml", "rb") as file:
    dependencies = tomllib.load(file)["project"]["dependencies"]
for dependency in dependencies:
    name = re.match(r"[A-Za-z0-9._-]+", dependency)
    floor = re.search(r">=\s*([^,;\s]+)", dependency)
    if name is None or floor is None:
        sys.exit(f"lowest-deps: {dependency!r} has no >= floor; every dependency needs one")
    print(f"{name.group(0)}=={floor.group(1)}")
EOF
)"
tools="pytest pytest-asyncio pytest-timeout hypothesis"

if [[ "$(cat "$VENV/.pins" 2>/dev/null)" != "$pins" ]]; then
    say "building $VENV with $("$PYTHON" -V) and the floors:" $pins
    rm -rf -- "$VENV"
    "$PYTHON" -m venv "$VENV"
    # shellcheck disable=SC2086  # one word per requirement
    "$VENV/bin/python" -m pip install --no-input --progress-bar off -q $pins $tools
    printf '%s' "$pins" >"$VENV/.pins"
fi

say "installed: $("$VENV/bin/python" -m pip freeze | grep -iE "^($(tr '\n' '|' <<<"$pins" | sed 's/==[^|]*//g; s/|$//'))==" | tr '\n' ' ')"
say "importing every module of runtime and reconciler"
PYTHONPATH="$PWD" "$VENV/bin/python" - <<'EOF'
import importlib
import pkgutil

for package in ("runtime", "reconciler"):
    root = importlib.import_module(package)
    for module in pkgutil.walk_packages(root.__path__, f"{package}."):
        importlib.import_module(module.name)
EOF
say "running the quick tests"
PYTHONPATH="$PWD" exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${PURE_TESTS[@]}"
