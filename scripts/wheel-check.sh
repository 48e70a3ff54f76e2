#!/usr/bin/env bash
# squish installed like any Python tool, used from a folder outside the checkout: build the
# wheel, install it into a fresh virtualenv of Debian's /usr/bin/python3, run `reconciler
# --help`, `validate` and a real `apply` of one busybox container (its first use checks
# the prerequisites), then `down`; and `pipx install` of the checkout gives a working
# `reconciler` too. Needs PyPI (the dependencies); run as the unprivileged account from
# the project folder:
#
#   bash scripts/wheel-check.sh
set -euo pipefail

say() { printf 'wheel-check: %s\n' "$*"; }
python=/usr/bin/python3
src="$PWD"
work="$(mktemp -d "${TMPDIR:-/tmp}/squish-wheel.XXXXXX")"
cleanup() {
    [[ -x "$work/venv/bin/reconciler" ]] && "$work/venv/bin/reconciler" down "$work/desired" >/dev/null 2>&1 || true
    rm -rf -- "$work"
}
trap cleanup EXIT

say "building the wheel from a copy of $src (pip wheel . --no-deps)"
mkdir "$work/src"
tar -C "$src" --exclude=./.venv --exclude=./build --exclude='./*.egg-info' --exclude=./.git -cf - . |
    tar -C "$work/src" -xf -
"$python" -m venv "$work/tools"
"$work/tools/bin/pip" install -q --progress-bar off pipx
"$work/tools/bin/pip" wheel -q --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/squish-*.whl)"
"$work/tools/bin/python" - "$wheel" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
for needed in ("reconciler/cli.py", "reconciler/prereqs.py", "reconciler/service.py",
               "runtime/holder/server.py", "runtime/security/profile.py"):
    assert needed in names, f"{needed} is not in the wheel"
stray = sorted(n for n in names if n.split("/")[0] in ("tests", "bench", "scripts", "desired"))
assert not stray, f"the wheel carries the checkout's {stray}"
print(f"wheel-check: {sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files")
EOF

say "installing it into a fresh virtualenv of $python"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --progress-bar off "$wheel"

cd "$work"  # nothing of the checkout on the way
export XDG_STATE_HOME="$work/state" XDG_CACHE_HOME="$work/cache" SQUISH_STATE_DIR="$work/s"
mkdir -p desired "$SQUISH_STATE_DIR"
chmod 0700 "$SQUISH_STATE_DIR"
cat >desired/hello.toml <<'EOF'
network = "none"
[layers]
busybox = "builtin"
[run]
command = "sleep"
args = ["1000"]
EOF
reconciler="$work/venv/bin/reconciler"
"$reconciler" --help >/dev/null
"$reconciler" validate desired
[[ ! -e "$XDG_STATE_HOME/squish/prereqs-ok" ]]
"$reconciler" apply desired
[[ -e "$XDG_STATE_HOME/squish/prereqs-ok" ]] || { say "FAILED: the first use checked nothing"; exit 1; }
"$reconciler" ps | grep -q 'hello.*running' || { say "FAILED: hello is not running"; exit 1; }
"$reconciler" down desired

say "pipx install of the checkout"
PIPX_HOME="$work/pipx" PIPX_BIN_DIR="$work/bin" "$work/tools/bin/pipx" install -q \
    --python "$python" "$work/src" >/dev/null
"$work/bin/reconciler" --help >/dev/null
"$work/bin/reconciler" validate desired
say "OK"
