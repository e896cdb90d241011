"""The configuration files of the highly available topology (ops/patroni, ops/etcd, ops/haproxy,
ops/pgbouncer): every placeholder is one the cluster fills, the programs accept what it renders, and
the settings docs/reliability.md relies on are there. The cluster itself runs in .ci/run's soak step
(bench/cluster.py, bench/soak.py), outside the suite: it needs root, namespaces and minutes."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import require_program

ROOT = Path(__file__).resolve().parents[2]
# bench/ is not a package the suite imports (it is run as `python -m bench.…` from the checkout).
_spec = importlib.util.spec_from_file_location("bench_cluster", ROOT / "bench" / "cluster.py")
cluster = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cluster  # dataclasses look their module up there
_spec.loader.exec_module(cluster)
TEMPLATES = {
    "etcd": ROOT / "ops" / "etcd" / "etcd.conf.yml",
    "patroni": ROOT / "ops" / "patroni" / "patroni.yml",
    "haproxy": ROOT / "ops" / "haproxy" / "haproxy.cfg",
    "pgbouncer": ROOT / "ops" / "pgbouncer" / "pgbouncer.ini",
}
PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")


@pytest.fixture
def rendered(tmp_path, monkeypatch):
    """What `ops/cluster/up` writes for every host, in a temporary state folder."""
    require_program("patroni", "/usr/bin/patroni")  # its user, postgres, owns the node's files
    monkeypatch.setattr(cluster, "STATE", tmp_path)
    settings = cluster.Settings(passwords={role: f"pw-{role}" for role in cluster.ROLES})
    cluster.configure(settings)
    return tmp_path


def test_every_placeholder_is_filled_and_nothing_else_looks_like_one(rendered):
    for name, template in TEMPLATES.items():
        assert PLACEHOLDER.findall(template.read_text()), f"{name}: no placeholders?"
    for path in rendered.rglob("*"):
        if path.is_file():
            assert "${" not in path.read_text(), f"{path} keeps a placeholder"


def test_haproxy_and_nginx_accept_the_rendered_files(rendered):
    haproxy = require_program("haproxy", "/usr/sbin/haproxy")
    check = subprocess.run([haproxy, "-c", "-f", str(rendered / "lb" / "haproxy.cfg")], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    nginx = require_program("nginx", "/usr/sbin/nginx")
    check = subprocess.run([nginx, "-t", "-c", str(rendered / "lb" / "nginx.conf")], capture_output=True,
                           text=True, timeout=30)
    # nginx -t also binds the listen address, which exists only inside the lb namespace.
    assert "syntax is ok" in check.stderr, check.stderr


def test_the_promises_of_the_docs_are_in_the_files(rendered):
    patroni = yaml.safe_load((rendered / "db1" / "patroni.yml").read_text())
    dcs = patroni["bootstrap"]["dcs"]
    # No acknowledged commit is lost in a failover: synchronous, strict, no lag allowed.
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is True
    # Not 0: a cleanly stopped primary's last record never reaches its standbys, and none would be promoted.
    assert dcs["maximum_lag_on_failover"] > 0
    assert dcs["postgresql"]["parameters"]["synchronous_commit"] == "on"
    assert dcs["ttl"] >= dcs["loop_wait"] + 2 * dcs["retry_timeout"]
    etcd = yaml.safe_load((rendered / "db1" / "etcd.yml").read_text())
    assert etcd["enable-grpc-gateway"] is True  # Patroni's etcd3 client speaks the JSON gateway
    assert len(etcd["initial-cluster"].split(",")) == 3
    haproxy = (rendered / "lb" / "haproxy.cfg").read_text()
    # Only the primary, and connections to a demoted one are closed, not left to write to a standby.
    assert "uri /primary" in haproxy and "on-marked-down shutdown-sessions" in haproxy
    pgbouncer = (rendered / "lb" / "pgbouncer" / "pgbouncer.ini").read_text()
    assert re.search(r"^pool_mode = transaction$", pgbouncer, re.M)
    assert f"port={cluster.PRIMARY_PORT}" in pgbouncer
    # The services use the pooler; the workers' LISTEN goes straight to HAProxy's primary port.
    settings = cluster.Settings(passwords={role: "x" for role in cluster.ROLES})
    worker = cluster.app_env(settings, cluster.BY_NAME["wk1"])
    assert f":{cluster.POOLER_PORT}/" in worker["DATABASE_URL"] and f":{cluster.POOLER_PORT}/" in worker[
        "WORKER_DATABASE_URL"]
    assert f":{cluster.PRIMARY_PORT}/" in worker["DIRECT_URL"]
    assert worker["TOLSTOY_PREPARE_THRESHOLD"] == "off"
