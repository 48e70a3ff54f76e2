#!/usr/bin/env bash
# Run make targets as the unprivileged squish account, from root.
#
#   scripts/as-user.sh TARGET...      (what `make TARGET` does when run as root)
#   scripts/as-user.sh --remove-copy  (what `make clean` does as root, after the local clean)
#
# squish is rootless-only, so as root we: prepare the host (scripts/host-setup.sh), copy
# this checkout into a folder the account owns (SQUISH_COPY_DIR, default ~squish/squish-src;
# the checkout itself may sit where the account cannot even look, e.g. under /root), then
# re-run `make TARGET...` there as that account and exit with its status.
#
# The copy is read by root and written by the account, so it works whatever the checkout's
# permissions are. Re-syncing deletes files that are gone from the checkout but keeps the
# copy's .venv and tool caches, so the virtualenv is only rebuilt when pyproject.toml changes.
set -euo pipefail

say() { printf 'as-user: %s\n' "$*"; }
die() { printf 'as-user: ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "only for root; as a normal user just run make"
(($#)) || die "usage: $0 TARGET... | --remove-copy"

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SQUISH_USER="${SQUISH_USER:-squish}"
export SQUISH_USER

if [[ "$1" == --remove-copy ]]; then
    id -u "$SQUISH_USER" >/dev/null 2>&1 || exit 0
    home="$(getent passwd "$SQUISH_USER" | cut -d: -f6)"
    DEST="${SQUISH_COPY_DIR:-$home/squish-src}"
    if [[ -d "$DEST" && "$DEST" != "$SRC" && "$(stat -c %U "$DEST")" == "$SQUISH_USER" ]]; then
        say "removing the copy $DEST"
        (cd / && runuser -u "$SQUISH_USER" -- rm -rf -- "$DEST" "$DEST.lock")
    fi
    exit 0
fi

bash "$SRC/scripts/host-setup.sh" "$@"

home="$(getent passwd "$SQUISH_USER" | cut -d: -f6)"
DEST="${SQUISH_COPY_DIR:-$home/squish-src}"
[[ "$DEST" == /* ]] || die "SQUISH_COPY_DIR must be an absolute path, not '$DEST'"

as_user() { (cd / && runuser -u "$SQUISH_USER" -- "$@"); }

if [[ "$SRC" -ef "$DEST" ]]; then
    say "already in the account's copy ($DEST); not syncing"
else
    as_user mkdir -p -- "$DEST" || die "'$SQUISH_USER' cannot create $DEST"
    [[ "$(stat -c %U "$DEST")" == "$SQUISH_USER" ]] || die "$DEST is not owned by '$SQUISH_USER'"
    # Sync under a lock so two concurrent `make` runs do not interleave their copies.
    as_user touch -- "$DEST.lock"
    exec 9<"$DEST.lock"
    flock -w 600 9 || die "timed out waiting for another sync of $DEST"

    say "syncing $SRC -> $DEST (as '$SQUISH_USER')"
    tmp="$(mktemp -d)"
    trap 'rm -rf -- "$tmp"' EXIT
    # What is not copied, and is kept in the copy: per-machine state and caches.
    prune=(\( -name .venv -o -name __pycache__ -o -name '*.egg-info' -o -name .mypy_cache
        -o -name .ruff_cache -o -name .pytest_cache -o -name .import_linter_cache
        -o -path ./build -o -path ./dist \) -prune -o)
    # "type path" lists; an entry of the copy missing from the checkout (or whose type
    # changed, e.g. file -> directory) is deleted before extracting.
    (cd "$SRC" && find . -mindepth 1 "${prune[@]}" -printf '%y %p\0') | LC_ALL=C sort -z >"$tmp/src"
    (cd "$DEST" && runuser -u "$SQUISH_USER" -- find . -mindepth 1 "${prune[@]}" -printf '%y %p\0') \
        | LC_ALL=C sort -z >"$tmp/dest"
    LC_ALL=C comm -z -13 "$tmp/src" "$tmp/dest" | sed -z 's/^. //' >"$tmp/stale"
    if [[ -s "$tmp/stale" ]]; then
        say "deleting $(tr -cd '\0' <"$tmp/stale" | wc -c) stale entries from the copy"
        (cd "$DEST" && runuser -u "$SQUISH_USER" -- xargs -0 rm -rf --) <"$tmp/stale"
    fi
    sed -z 's/^. //' "$tmp/src" >"$tmp/names"
    (cd "$SRC" && tar -c -f - --null --no-recursion -T "$tmp/names") \
        | (cd "$DEST" && runuser -u "$SQUISH_USER" -- tar -x -f - --no-same-owner)
    exec 9<&-
fi

# A clean environment for the account, passing through what matters to the build and tests.
env_args=(
    "HOME=$home" "USER=$SQUISH_USER" "LOGNAME=$SQUISH_USER" "SHELL=/bin/bash"
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    "LANG=${LANG:-C.UTF-8}"
)
pass_re='^(CI|TERM|COLORTERM|NO_COLOR|FORCE_COLOR|TZ|LC_[A-Z]+|SQUISH_[A-Za-z0-9_]+'
pass_re+='|PYTEST_ADDOPTS|PYTHONUNBUFFERED|PIP_[A-Z0-9_]+|SSL_CERT_FILE|SSL_CERT_DIR'
pass_re+='|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|[Hh][Tt][Tt][Pp][Ss]?_[Pp][Rr][Oo][Xx][Yy]'
pass_re+='|[Nn][Oo]_[Pp][Rr][Oo][Xx][Yy]|[Aa][Ll][Ll]_[Pp][Rr][Oo][Xx][Yy])$'
while IFS= read -r -d '' kv; do
    [[ "${kv%%=*}" =~ $pass_re ]] && env_args+=("$kv")
done < <(env -0)

# Into the cgroup v2 folder host-setup delegated to the account (see there), so that
# what the account starts can make cgroups of its own.
# The filesystem type follows the " - " separator (optional fields come before it).
v2="$(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2" && $4 == "/") { print $5; exit } break } }' /proc/self/mountinfo)"
session=""
if [[ -n "$v2" && -w "$v2/squish-$SQUISH_USER/session/cgroup.procs" ]]; then
    session="$v2/squish-$SQUISH_USER/session/cgroup.procs"
fi

say "running 'make $*' in $DEST as '$SQUISH_USER'"
cd "$DEST"
set +e
# Only the account's command moves into its cgroup (a subshell that then becomes it):
# this script, and the second-account check after it, stay where they are.
(
    if [[ -n "$session" ]]; then echo "$BASHPID" >"$session"; fi
    exec runuser -u "$SQUISH_USER" -- env -i "${env_args[@]}" make --no-print-directory "$@"
)
rc=$?
set -e
((rc == 0)) || say "'make $*' as '$SQUISH_USER' failed (exit $rc)"
# `make test` as root can also check what needs root to set up: a second account trying
# to reach this account's containers (docs/security.md).
if ((rc == 0)) && [[ " $* " == *" test "* ]]; then
    bash "$SRC/scripts/peer-check.sh" "$DEST" || rc=$?
    ((rc == 0)) || say "the second-account check failed (exit $rc)"
fi
exit "$rc"
