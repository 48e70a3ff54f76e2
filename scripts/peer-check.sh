#!/usr/bin/env bash
# A second, real account tries to read or steer the squish account's containers.
#
#   scripts/peer-check.sh DEST     (as root; DEST is the account's copy with its .venv)
#
# Run by scripts/as-user.sh after `make test` passed as root: the squish account starts a
# holder and a container in a fresh state folder; the peer account (SQUISH_PEER_USER,
# default squish-peer, created here) tries to list that folder, connect to the holder,
# signal the holder and the container, and read their /proc entries; every attempt must
# be refused. The squish account then removes what it started.
set -euo pipefail

say() { printf 'peer-check: %s\n' "$*"; }
die() { printf 'peer-check: ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "only for root"
DEST="$1"
SQUISH_USER="${SQUISH_USER:-squish}"
PEER="${SQUISH_PEER_USER:-squish-peer}"
[[ "$PEER" =~ ^[a-z_][a-z0-9_-]*$ ]] || die "SQUISH_PEER_USER='$PEER' is not a valid account name"
if ! id -u "$PEER" >/dev/null 2>&1; then
    say "creating the second account '$PEER'"
    useradd --no-create-home --shell /usr/sbin/nologin "$PEER"
fi

state="/dev/shm/squish-peer-check-$$"
as_user() { (cd "$DEST" && runuser -u "$SQUISH_USER" -- env -i HOME="$(getent passwd "$SQUISH_USER" | cut -d: -f6)" PATH=/usr/bin:/bin "$@"); }
probe="$(mktemp /tmp/peer-check.XXXXXX.py)"
cleanup() {
    as_user .venv/bin/python tests/peer_check.py stop "$state" >/dev/null 2>&1 || true
    rm -rf -- "$state" "$probe"
}
trap cleanup EXIT

read -r holder init < <(as_user .venv/bin/python tests/peer_check.py start "$state")
say "'$SQUISH_USER' runs holder $holder and container init $init in $state"
install -m 0644 "$DEST/tests/peer_check.py" "$probe"
if (cd / && runuser -u "$PEER" -- /usr/bin/python3 "$probe" probe "$state" "$holder" "$init"); then
    say "OK: '$PEER' was refused everything"
else
    die "'$PEER' got through (see above)"
fi
