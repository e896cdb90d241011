#!/usr/bin/env bash
# Deploy a release on this host: install it into its own venv, migrate the
# database first (tolstoy db up, which uses DIRECT_URL), switch the `current`
# link, restart the units, and wait for /status. If the new code does not come
# up healthy, the link goes back to the previous release and it is restarted.
# Migrations are not undone: each one must work with the code before it.
set -euo pipefail

usage() {
    cat <<'HELP'
Usage: sudo app-deploy.sh [options]

  --source DIR      the release to install (default: this script's repository)
  --prefix DIR      install root (default: /opt/tolstoy): releases/<time>/{app,venv}, current -> one of them
  --env-file FILE   settings the units read (default: /etc/tolstoy/tolstoy.env)
  --workers N       tolstoy-worker@1..N units to run (default: 2)
  --port PORT       where Gunicorn listens, for the health check (default: PORT from the env file, else 3000)
  --timeout SECONDS how long to wait for /status to answer 200 (default: 60)
  --keep N          releases to keep (default: 5)
  -h, --help        this help

Run as root. Installs ops/systemd units and ops/nginx/tolstoy.conf on the way.
HELP
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="$(cd "$here/../.." && pwd)"
prefix="/opt/tolstoy"
env_file="/etc/tolstoy/tolstoy.env"
workers=2
port=""
timeout=60
keep=5
while [ "$#" -gt 0 ]; do
    case "$1" in
        --source) source_dir="${2:?--source needs a value}"; shift 2 ;;
        --prefix) prefix="${2:?--prefix needs a value}"; shift 2 ;;
        --env-file) env_file="${2:?--env-file needs a value}"; shift 2 ;;
        --workers) workers="${2:?--workers needs a value}"; shift 2 ;;
        --port) port="${2:?--port needs a value}"; shift 2 ;;
        --timeout) timeout="${2:?--timeout needs a value}"; shift 2 ;;
        --keep) keep="${2:?--keep needs a value}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "app-deploy: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "app-deploy: run as root (sudo)" >&2; exit 2; }
[ -r "$env_file" ] || { echo "app-deploy: $env_file is missing (see ops/systemd/tolstoy.env.example)" >&2; exit 2; }
[ -f "$source_dir/pyproject.toml" ] || { echo "app-deploy: $source_dir is not a Tolstoy checkout" >&2; exit 2; }
if [ -z "$port" ]; then
    port="$(sed -n 's/^PORT=//p' "$env_file" | tail -n 1)"
    port="${port:-3000}"
fi

log() { echo "app-deploy: $*" >&2; }

units() {
    local unit_list=(tolstoy-api.service)
    local n
    for n in $(seq 1 "$workers"); do
        unit_list+=("tolstoy-worker@$n.service")
    done
    printf '%s\n' "${unit_list[@]}"
}

healthy() {
    local deadline=$((SECONDS + timeout))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/status")" = "200" ]; then
            return 0
        fi
        sleep 2
    done
    return 1
}

release="$prefix/releases/$(date -u +%Y%m%d%H%M%S)"
log "installing $source_dir into $release"
install -d -m 0755 "$release"
# The code (no VCS data, no local venv or embedded database).
tar -C "$source_dir" --exclude=.git --exclude=.venv --exclude=.tolstoy --exclude=__pycache__ -cf - . \
    | tar -C "$release" --one-top-level=app -xf -
python3 -m venv "$release/venv"
"$release/venv/bin/pip" install --quiet --upgrade pip
# Editable: the package reads sql/, db/migrations and gunicorn.conf.py from its source tree.
"$release/venv/bin/pip" install --quiet -e "$release/app"
# The service user cannot write the release (ProtectSystem=strict): compile now.
"$release/venv/bin/python" -m compileall -q "$release/app/tolstoy" >/dev/null
chown -R root:root "$release"

log "migrating the database (tolstoy db up, on DIRECT_URL)"
(
    set -a
    # shellcheck disable=SC1090
    . "$env_file"
    set +a
    cd "$release/app"
    runuser -u tolstoy -- env "PATH=$release/venv/bin:$PATH" "$release/venv/bin/tolstoy" db up
)

previous="$(readlink -f "$prefix/current" 2>/dev/null || true)"
switch_to() {
    ln -sfn "$1" "$prefix/current.new"
    mv -T "$prefix/current.new" "$prefix/current"
}

install -m 0644 "$release/app/ops/systemd/tolstoy-api.service" /etc/systemd/system/tolstoy-api.service
install -m 0644 "$release/app/ops/systemd/tolstoy-worker@.service" /etc/systemd/system/tolstoy-worker@.service
systemctl daemon-reload

switch_to "$release"
mapfile -t all_units < <(units)
log "restarting ${all_units[*]}"
systemctl enable --quiet "${all_units[@]}"
systemctl restart "${all_units[@]}"

if healthy; then
    log "release $(basename "$release") is live"
    # Keep the newest releases only.
    find "$prefix/releases" -mindepth 1 -maxdepth 1 -type d | sort | head -n "-$keep" | while read -r old; do
        [ "$old" = "$(readlink -f "$prefix/current")" ] || rm -rf "$old"
    done
    exit 0
fi

log "/status did not answer 200 within ${timeout}s"
journalctl -u tolstoy-api.service -n 30 --no-pager >&2 || true
if [ -n "$previous" ] && [ -d "$previous" ]; then
    log "rolling back to $(basename "$previous")"
    switch_to "$previous"
    systemctl restart "${all_units[@]}"
    if healthy; then
        log "rolled back; the previous release is serving"
    else
        log "the previous release is not healthy either: look at the database and the logs"
    fi
else
    log "no previous release to roll back to"
fi
exit 1
