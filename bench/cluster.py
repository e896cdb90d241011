"""The production topology on one machine, in Linux network namespaces.

``ops/cluster/up`` (``python -m bench.cluster up``) builds, from the files in
``ops/``, what docs/deploying.md and docs/reliability.md describe:

    host    address      runs
    db1-3   10.77.0.11-13 etcd member + Patroni (PostgreSQL 15 from Debian)
    lb      10.77.0.20   HAProxy (:5000 = the primary, by Patroni's REST check),
                         PgBouncer (:6432, transaction mode), Nginx (:80)
    api1-2  10.77.0.31-32 tolstoy serve (Gunicorn), installed from the wheel
    wk1-2   10.77.0.41-42 tolstoy worker, installed from the wheel
    client  10.77.0.50   the soak driver and its recorders (bench/soak.py)

Each host is a network namespace ``tolc-<host>`` with one veth into a bridge
``tolc-br0`` that this module creates in the root namespace without an address:
every address lives inside a namespace made here. Processes share the
machine's process and file namespaces, so a fault is a signal to the processes
of one namespace (``ip netns pids``), and a cut is a blackhole route in it.

``down`` (``ops/cluster/down``) stops every process of every ``tolc-*``
namespace (SIGTERM, then SIGKILL), deletes the namespaces, the bridge and any
veth left over; it finds all of them by the prefix, so it works after a failed
``up``, after a crashed soak, and twice in a row. ``up`` calls it itself when
any step fails.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops"
PREFIX = os.environ.get("TOLSTOY_CLUSTER_PREFIX", "tolc")
BRIDGE = f"{PREFIX}-br0"
NET = os.environ.get("TOLSTOY_CLUSTER_NET", "10.77.0")
NETWORK = f"{NET}.0/24"
STATE = Path(os.environ.get("TOLSTOY_CLUSTER_DIR", "/tmp/tolstoy-cluster"))
# The release (wheel + its venv) survives `down`, so the next `up` only reinstalls the wheel.
RELEASE = Path(os.environ.get("TOLSTOY_CLUSTER_RELEASE", str(ROOT / ".tolstoy" / "cluster-release")))
PG_BIN = Path(os.environ.get("TOLSTOY_CLUSTER_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    services: tuple[str, ...]

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"


HOSTS = [
    Host("db1", f"{NET}.11", ("etcd", "patroni")),
    Host("db2", f"{NET}.12", ("etcd", "patroni")),
    Host("db3", f"{NET}.13", ("etcd", "patroni")),
    Host("lb", f"{NET}.20", ("haproxy", "pgbouncer", "nginx")),
    Host("api1", f"{NET}.31", ("api",)),
    Host("api2", f"{NET}.32", ("api",)),
    Host("wk1", f"{NET}.41", ("worker",)),
    Host("wk2", f"{NET}.42", ("worker",)),
    Host("client", f"{NET}.50", ()),
]
BY_NAME = {host.name: host for host in HOSTS}
DB_HOSTS = [h for h in HOSTS if "patroni" in h.services]
LB = BY_NAME["lb"]
CLIENT = BY_NAME["client"]
API_URL = f"http://{LB.address}"
PRIMARY_PORT = 5000
POOLER_PORT = 6432


@dataclass
class Settings:
    """What one cluster was built with; saved in STATE/cluster.json for the soak and `down`."""

    ttl: int = 30
    loop_wait: int = 10
    retry_timeout: int = 10
    shared_buffers: str = "32MB"
    web_concurrency: int = 2
    worker_concurrency: int = 4
    lease_seconds: float = 15.0
    poll_seconds: float = 5.0
    passwords: dict = field(default_factory=dict)
    admin_token: str = ""
    api_key_secret: str = ""
    encryption_key: str = ""

    @classmethod
    def load(cls) -> Settings:
        path = STATE / "cluster.json"
        if not path.is_file():
            raise SystemExit(f"cluster: no cluster state in {STATE} (run ops/cluster/up)")
        return cls(**json.loads(path.read_text()))

    def save(self) -> None:
        path = STATE / "cluster.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o600)

    def url(self, role: str, port: int = POOLER_PORT, database: str = "tolstoy") -> str:
        # Plain TCP inside the bridge: give PostgreSQL a certificate and sslmode=verify-full on real hosts.
        return f"postgresql://{role}:{self.passwords[role]}@{LB.address}:{port}/{database}?sslmode=disable"


ROLES = ("postgres", "replicator", "rewinder", "tolstoy_owner", "tolstoy_app", "tolstoy_worker", "tolstoy_admin")


_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"cluster: [{time.monotonic() - _T0:5.0f} s] {message}", file=sys.stderr, flush=True)


def run(*args: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


# ---- network namespaces -------------------------------------------------------------

_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def enter(host: Host) -> None:
    """Move this thread (and the threads and processes it starts later) into a host's namespace."""
    fd = os.open(f"/run/netns/{host.netns}", os.O_RDONLY)
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(host: Host):
    """Run a block in a host's namespace, then come back to the one we were in."""
    back = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        enter(host)
        yield
    finally:
        _setns(back)
        os.close(back)


def namespaces() -> list[str]:
    """Every namespace of ours (by the prefix), including leftovers of an earlier run."""
    listed = run("ip", "netns", "list", check=False).stdout.split()
    return [name for name in listed if name.startswith(f"{PREFIX}-")]


def create_network() -> None:
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    run("ip", "link", "set", BRIDGE, "up")
    for host in HOSTS:
        veth = f"{PREFIX}-{host.name}"  # the host side; "eth0" inside
        run("ip", "netns", "add", host.netns)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        run("ip", "link", "set", veth, "master", BRIDGE, "up")
        run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        run("ip", "-n", host.netns, "link", "set", "eth0", "up")
        run("ip", "-n", host.netns, "link", "set", "lo", "up")


def pids_in(netns: str) -> list[int]:
    return [int(p) for p in run("ip", "netns", "pids", netns, check=False).stdout.split()]


def signal_pids(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def empty_namespaces(names: list[str], grace: float) -> None:
    """SIGTERM every process of the namespaces, SIGKILL what is left after ``grace`` seconds."""
    for name in names:
        signal_pids(pids_in(name), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(pids_in(name) for name in names) and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(50):
        left = [pid for name in names for pid in pids_in(name)]
        if not left:
            return
        signal_pids(left, signal.SIGKILL)
        time.sleep(0.1)


def empty_namespace(netns: str, grace: float) -> None:
    empty_namespaces([netns], grace)


def down(grace: float = 20.0) -> None:
    """Stop every process of our namespaces, delete them, the bridge and leftover veths; idempotent."""
    names = namespaces()
    # Application hosts first (they hold connections), the databases last (a clean Patroni stop).
    databases = [n for n in names if n.removeprefix(f"{PREFIX}-") in {h.name for h in DB_HOSTS}]
    empty_namespaces([n for n in names if n not in databases], grace)
    empty_namespaces(databases, grace)
    for name in names:
        run("ip", "netns", "del", name, check=False)
    run("ip", "link", "del", BRIDGE, check=False)
    for line in run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        link = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if link.startswith(f"{PREFIX}-"):
            run("ip", "link", "del", link, check=False)
    if names:
        say(f"removed {len(names)} namespace(s) and the bridge {BRIDGE}")


# ---- configuration from ops/ ----------------------------------------------------------

def render(template: Path, **values) -> str:
    """An ops/ file with its ${...} filled; a placeholder left unfilled is an error."""
    return Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})


def write(path: Path, text: str, owner: str | None = None, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    if owner:
        shutil.chown(path, owner, owner)
    return path


def nginx_site(logs: Path) -> str:
    """ops/nginx/tolstoy.conf with both API hosts upstream; each replaced line must exist."""
    text = (OPS / "nginx" / "tolstoy.conf").read_text()
    upstream = "\n    ".join(f"server {h.address}:3000 fail_timeout=0;" for h in HOSTS if "api" in h.services)
    for old, new in [
        ("server 127.0.0.1:3000 fail_timeout=0;", upstream),
        ("    listen 80;\n", f"    listen {LB.address}:80;\n"),
        ("    listen [::]:80;\n", ""),
        ("/var/log/nginx/", f"{logs}/"),
    ]:
        if old not in text:
            raise RuntimeError(f"ops/nginx/tolstoy.conf no longer contains {old!r}")
        text = text.replace(old, new)
    return text


def configure(settings: Settings) -> None:
    """Write every host's files under STATE/<host>/."""
    etcd_cluster = ",".join(f"{h.name}=http://{h.address}:2380" for h in DB_HOSTS)
    etcd_hosts = ",".join(f"{h.address}:2379" for h in DB_HOSTS)
    for host in DB_HOSTS:
        folder = STATE / host.name
        for sub, owner in (("etcd", "etcd"), ("run", "postgres"), ("", "postgres")):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            shutil.chown(folder / sub, owner, owner)
        (folder / "etcd").chmod(0o700)
        write(folder / "etcd.yml", render(OPS / "etcd" / "etcd.conf.yml", NAME=host.name, ADDRESS=host.address,
                                          DATA_DIR=folder / "etcd", INITIAL_CLUSTER=etcd_cluster), owner="etcd")
        write(folder / "patroni.yml", render(
            OPS / "patroni" / "patroni.yml", NAME=host.name, ADDRESS=host.address, ETCD_HOSTS=etcd_hosts,
            TTL=settings.ttl, LOOP_WAIT=settings.loop_wait, RETRY_TIMEOUT=settings.retry_timeout,
            SHARED_BUFFERS=settings.shared_buffers, NETWORK=NETWORK, DATA_DIR=folder / "pgdata",
            BIN_DIR=PG_BIN, PGPASS=folder / "pgpass", SOCKET_DIR=folder / "run",
            SUPERUSER_PASSWORD=settings.passwords["postgres"],
            REPLICATION_PASSWORD=settings.passwords["replicator"],
            REWIND_PASSWORD=settings.passwords["rewinder"]), owner="postgres")
    lb = STATE / "lb"
    lb.mkdir(parents=True, exist_ok=True)
    nodes = {}
    for index, host in enumerate(DB_HOSTS, start=1):
        nodes[f"NODE{index}_NAME"] = host.name
        nodes[f"NODE{index}_ADDRESS"] = host.address
    write(lb / "haproxy.cfg", render(OPS / "haproxy" / "haproxy.cfg", BIND=LB.address, **nodes))
    run_dir = lb / "pgbouncer"
    run_dir.mkdir(exist_ok=True)
    shutil.chown(run_dir, "postgres", "postgres")
    write(run_dir / "pgbouncer.ini", render(OPS / "pgbouncer" / "pgbouncer.ini", BIND=LB.address,
                                            PRIMARY_HOST=LB.address, PRIMARY_PORT=PRIMARY_PORT, RUN_DIR=run_dir),
          owner="postgres")
    users = "".join(f'"{role}" "{settings.passwords[role]}"\n'
                    for role in ("tolstoy_app", "tolstoy_worker", "tolstoy_admin"))
    write(run_dir / "userlist.txt", users, owner="postgres")
    logs = lb / "nginx-logs"
    logs.mkdir(exist_ok=True)
    temp = "\n".join(f"    {kind}_temp_path {lb}/nginx-{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                             "uwsgi", "scgi"))
    write(lb / "nginx-site.conf", nginx_site(logs), mode=0o644)
    write(lb / "nginx.conf", f"user root;\nworker_processes 1;\ndaemon off;\npid {lb}/nginx.pid;\n"
                             f"error_log {logs}/main-error.log warn;\nevents {{ worker_connections 512; }}\n"
                             f"http {{\n    default_type application/octet-stream;\n{temp}\n"
                             f"    include {lb / 'nginx-site.conf'};\n}}\n", mode=0o644)
    for host in HOSTS:
        if "api" in host.services or "worker" in host.services:
            (STATE / host.name / "metrics").mkdir(parents=True, exist_ok=True)


def app_env(settings: Settings, host: Host) -> dict:
    """The settings an API or worker host gets (its /etc/tolstoy/tolstoy.env plus the secret's URLs)."""
    env = {
        "PATH": f"{RELEASE / 'venv' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(STATE / host.name),
        "TOLSTOY_ENV": "production",
        "USE_AWS_SECRETS": "false",
        "DATABASE_URL": settings.url("tolstoy_app"),
        "WORKER_DATABASE_URL": settings.url("tolstoy_worker"),
        "ADMIN_DATABASE_URL": settings.url("tolstoy_admin"),
        # Transaction pooling keeps no prepared statements (docs/deploying.md, "Scaling out").
        "TOLSTOY_PREPARE_THRESHOLD": "off",
        "TOLSTOY_AUTH_MODE": "api_key",
        "TOLSTOY_API_KEY_SECRET": settings.api_key_secret,
        "TOLSTOY_ADMIN_TOKEN": settings.admin_token,
        "TOLSTOY_ENCRYPTION_KEY": settings.encryption_key,
        "TOLSTOY_TRUSTED_PROXIES": LB.address,
        "TOLSTOY_PUBLIC_URL": API_URL,
        # The recorders the soak's tools and webhooks call live on the client host.
        "TOLSTOY_ALLOW_NETWORKS": f"{CLIENT.address}/32",
        "TOLSTOY_POOL_MIN_SIZE": "1",
        "TOLSTOY_POOL_MAX_SIZE": "4",
        "TOLSTOY_WORKER_LEASE_SECONDS": str(settings.lease_seconds),
        "TOLSTOY_WORKER_POLL_SECONDS": str(settings.poll_seconds),
        "TOLSTOY_WEBHOOK_RETRY_BASE_MS": "1000",
        "TOLSTOY_WEBHOOK_RETRY_MAX_MS": "10000",
        "TOLSTOY_DATA_DIR": str(STATE / host.name),
        "PROMETHEUS_MULTIPROC_DIR": str(STATE / host.name / "metrics"),
        "WEB_CONCURRENCY": str(settings.web_concurrency),
        "TOLSTOY_BIND": f"{host.address}:3000",
        "PYTHONUNBUFFERED": "1",
    }
    if "worker" in host.services:
        # LISTEN needs a session of its own: straight to the primary through HAProxy, not the pooler.
        env["DIRECT_URL"] = settings.url("tolstoy_worker", PRIMARY_PORT)
    return env


def command(host: Host, service: str, settings: Settings) -> tuple[list[str], dict | None]:
    folder = STATE / host.name
    as_user = lambda user: ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]  # noqa: E731
    if service == "etcd":
        return as_user("etcd") + ["etcd", "--config-file", str(folder / "etcd.yml")], None
    if service == "patroni":
        env = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "LANG": "C.UTF-8"}
        return as_user("postgres") + ["patroni", str(folder / "patroni.yml")], env
    if service == "haproxy":
        return ["haproxy", "-db", "-f", str(folder / "haproxy.cfg")], None
    if service == "pgbouncer":
        return ["pgbouncer", "-u", "postgres", str(folder / "pgbouncer" / "pgbouncer.ini")], None
    if service == "nginx":
        return ["nginx", "-c", str(folder / "nginx.conf")], None
    tolstoy = str(RELEASE / "venv" / "bin" / "tolstoy")
    if service == "api":
        return [tolstoy, "serve"], app_env(settings, host)
    if service == "worker":
        return [tolstoy, "worker", "--concurrency", str(settings.worker_concurrency)], app_env(settings, host)
    raise ValueError(service)


# ---- processes --------------------------------------------------------------------

def start(host: Host, service: str, settings: Settings) -> int:
    """Start one service of a host in its namespace, in the background; returns its pid."""
    argv, env = command(host, service, settings)
    folder = STATE / host.name
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / f"{service}.log", "ab")  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(["ip", "netns", "exec", host.netns, *argv], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env if env is not None else {"PATH": os.environ["PATH"]},
                               start_new_session=True, cwd=folder)
    log.close()
    (folder / f"{service}.pid").write_text(str(process.pid))
    return process.pid


def start_host(host: Host, settings: Settings) -> None:
    for service in host.services:
        start(host, service, settings)


def stop_host(host: Host, grace: float = 30.0) -> None:
    """A clean shutdown of every process of the host (SIGTERM, SIGKILL after ``grace``)."""
    empty_namespace(host.netns, grace)


def kill_host(host: Host) -> None:
    """The host dies: SIGKILL to every process in its namespace."""
    for _ in range(20):
        left = pids_in(host.netns)
        if not left:
            return
        signal_pids(left, signal.SIGKILL)
        time.sleep(0.1)


def service_pid(host: Host, service: str) -> int | None:
    try:
        pid = int((STATE / host.name / f"{service}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if pid in pids_in(host.netns) else None


def cut(host: Host) -> None:
    """Cut a host off from the database tier: its packets to the load balancer host are dropped."""
    run("ip", "-n", host.netns, "route", "add", "blackhole", f"{LB.address}/32")


def heal(host: Host) -> None:
    run("ip", "-n", host.netns, "route", "del", "blackhole", f"{LB.address}/32", check=False)


# ---- probes (run inside the client namespace) ---------------------------------------------

def http(url: str, timeout: float = 3.0, **kwargs) -> tuple[int, bytes]:
    request = urllib.request.Request(url, **kwargs)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def wait_until(what: str, check, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def patroni_cluster() -> dict | None:
    """Patroni's view of the cluster from any node that answers (GET /cluster)."""
    for host in DB_HOSTS:
        status, body = http(f"http://{host.address}:8008/cluster", timeout=2)
        if status == 200:
            return json.loads(body)
    return None


def primary() -> Host | None:
    """The node whose Patroni says it is the primary (what HAProxy routes to)."""
    for host in DB_HOSTS:
        if http(f"http://{host.address}:8008/primary", timeout=2)[0] == 200:
            return host
    return None


def healthy_replication() -> bool:
    """A leader and a synchronous standby, both running."""
    cluster = patroni_cluster() or {}
    roles = {m.get("role") for m in cluster.get("members", []) if m.get("state") in ("running", "streaming")}
    return "leader" in roles and "sync_standby" in roles


def port_open(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1):
        return True
    return False


# ---- up -------------------------------------------------------------------------------

def build_release() -> Path:
    """The wheel of this checkout, installed in RELEASE/venv (as app-deploy.sh installs a release)."""
    wheels = RELEASE / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    say("building the wheel")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT))
    [wheel] = wheels.glob("tolstoy-*.whl")
    venv = RELEASE / "venv"
    if not (venv / "bin" / "python").exists():
        say("creating the release venv (first time: installs the dependencies)")
        run(sys.executable, "-m", "venv", str(venv))
        run(str(venv / "bin" / "pip"), "install", "-q", str(wheel))
    else:
        # Same dependencies as before unless pyproject changed; pip brings any new one.
        run(str(venv / "bin" / "pip"), "install", "-q", "--force-reinstall", "--no-deps", str(wheel))
        run(str(venv / "bin" / "pip"), "install", "-q", str(wheel))
    return wheel


def create_roles(settings: Settings) -> None:
    """docs/deploying.md step 0, as the superuser, through HAProxy to the primary."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(settings.url("postgres", PRIMARY_PORT, "postgres"), autocommit=True) as conn:
        for role, extra in (("tolstoy_owner", "createrole"), ("tolstoy_app", ""), ("tolstoy_worker", ""),
                            ("tolstoy_admin", "")):
            exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
            verb = "alter" if exists else "create"
            conn.execute(sql.SQL("{} role {} login {} password {}").format(
                sql.SQL(verb), sql.Identifier(role), sql.SQL(extra), sql.Literal(settings.passwords[role])))
        if not conn.execute("select 1 from pg_database where datname = 'tolstoy'").fetchone():
            conn.execute("create database tolstoy owner tolstoy_owner")
        conn.execute("grant tolstoy_admin to tolstoy_owner with admin option")


def migrate(settings: Settings) -> None:
    """`tolstoy db up` from the release, on the first API host, as the schema owner (DIRECT_URL)."""
    host = BY_NAME["api1"]
    env = {**app_env(settings, host), "DIRECT_URL": settings.url("tolstoy_owner", PRIMARY_PORT)}
    result = subprocess.run(["ip", "netns", "exec", host.netns, str(RELEASE / "venv" / "bin" / "tolstoy"), "db", "up"],
                            env=env, capture_output=True, text=True, timeout=600)
    (STATE / host.name / "migrate.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"tolstoy db up failed: {result.stderr[-2000:]}")


def new_settings(args) -> Settings:
    settings = Settings(ttl=args.ttl, loop_wait=args.loop_wait, retry_timeout=args.retry_timeout,
                        lease_seconds=args.lease_seconds)
    settings.passwords = {role: secrets.token_urlsafe(18) for role in ROLES}
    settings.admin_token = secrets.token_urlsafe(36)
    settings.api_key_secret = secrets.token_urlsafe(36)
    settings.encryption_key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    return settings


def up(args) -> None:
    if namespaces():
        raise SystemExit(f"cluster: namespaces {', '.join(namespaces())} exist; run ops/cluster/down first")
    for program in ("etcd", "patroni", "haproxy", "pgbouncer", "nginx", "setpriv"):
        if shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            raise SystemExit(f"cluster: {program} is missing (apt-get install etcd-server patroni haproxy "
                             "pgbouncer nginx postgresql-15)")
    started = time.monotonic()
    build_release()
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    STATE.chmod(0o755)
    settings = new_settings(args)
    settings.save()
    try:
        configure(settings)
        create_network()
        with inside(CLIENT):
            for host in DB_HOSTS:
                start(host, "etcd", settings)
            wait_until("etcd answers", lambda: all(
                http(f"http://{h.address}:2379/health")[0] == 200 for h in DB_HOSTS), 60)
            for host in DB_HOSTS:
                start(host, "patroni", settings)
            say("waiting for Patroni to elect a primary and a synchronous standby")
            wait_until("a Patroni primary and a synchronous standby", healthy_replication, 180, 1)
            for service in ("haproxy", "pgbouncer"):
                start(LB, service, settings)
            wait_until("HAProxy's primary port", lambda: port_open(LB.address, PRIMARY_PORT), 30)
            wait_until("the primary through HAProxy", lambda: _can_connect(settings), 60, 1)
            on_the_primary(settings, "creating the roles", create_roles)
            say("migrating (tolstoy db up from the wheel)")
            on_the_primary(settings, "migrating", migrate)
            for host in HOSTS:
                if host.services in (("api",), ("worker",)):
                    start_host(host, settings)
            start(LB, "nginx", settings)
            wait_until("/status through Nginx", lambda: http(f"{API_URL}/status")[0] == 200, 90, 1)
            for host in HOSTS:
                if "api" in host.services:
                    wait_until(f"{host.name} answers", lambda h=host: http(f"http://{h.address}:3000/health")[0] == 200,
                               90, 1)
    except BaseException:
        say(f"bringing the cluster up failed; logs kept in {STATE}; tearing it down")
        down()
        raise
    say(f"up in {time.monotonic() - started:.0f} s: API {API_URL} (from namespace {CLIENT.netns}), "
        f"primary {primary_name()}, state in {STATE}")


def primary_name() -> str:
    with inside(CLIENT):
        host = primary()
    return host.name if host else "none"


def on_the_primary(settings: Settings, what: str, step, timeout: float = 120) -> None:
    """Run ``step(settings)`` (idempotent) through HAProxy's primary port until it succeeds: a cluster
    that was just bootstrapped may still move its leader, or HAProxy route to the old one until its
    next check, so the server that answered "not in recovery" a moment ago can refuse writes now."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            step(settings)
            return
        except (psycopg.errors.ReadOnlySqlTransaction, psycopg.OperationalError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                raise
            say(f"{what}: {str(exc).splitlines()[0][:200]}; again once the primary answers")
            time.sleep(2)
            wait_until("the primary through HAProxy", lambda: _can_connect(settings), 60, 1)


def _can_connect(settings: Settings) -> bool:
    import psycopg

    try:
        with psycopg.connect(settings.url("postgres", PRIMARY_PORT, "postgres"), connect_timeout=3) as conn:
            return not conn.execute("select pg_is_in_recovery()").fetchone()[0]
    except psycopg.Error:
        return False


def status() -> None:
    names = namespaces()
    if not names:
        print("cluster: down")
        return
    for name in names:
        pids = pids_in(name)
        print(f"{name}: {len(pids)} process(es)")
    with inside(CLIENT):
        cluster = patroni_cluster()
    for member in (cluster or {}).get("members", []):
        print(f"  {member['name']}: {member['role']} {member['state']} lag={member.get('lag', '-')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start_parser = sub.add_parser("up", help="build the cluster (tears it down again if any step fails)")
    start_parser.add_argument("--ttl", type=int, default=30, help="Patroni leader key ttl (s)")
    start_parser.add_argument("--loop-wait", type=int, default=10, help="Patroni loop_wait (s)")
    start_parser.add_argument("--retry-timeout", type=int, default=10, help="Patroni retry_timeout (s)")
    start_parser.add_argument("--lease-seconds", type=float, default=15.0, help="TOLSTOY_WORKER_LEASE_SECONDS")
    sub.add_parser("down", help="stop and remove everything of the cluster (idempotent)")
    sub.add_parser("status", help="namespaces, processes, Patroni members")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("cluster: needs root (network namespaces, a bridge)")
    if args.command == "up":
        up(args)
    elif args.command == "down":
        down()
    else:
        status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
