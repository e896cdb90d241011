"""HTTP load with wrk (Lua scripts in bench/lua) and the pgbench ceiling."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass
class Run:
    """One wrk run."""

    scenario: str
    server: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    # CPU seconds per 1,000 requests of the server's processes (its master and workers) and of
    # PostgreSQL (the postmaster and every backend), read from /proc around the run: unlike requests
    # per second, what one request costs holds from machine to machine.
    app_cpu_s_per_1k: float | None = None
    db_cpu_s_per_1k: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def wrk_path() -> str:
    """wrk, or a clear stop: it is Debian's package."""
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("bench: wrk is not installed (apt-get install wrk)")
    return found


def _ms(text: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * _UNITS[unit]


def parse(output: str, scenario: str, server: str) -> Run:
    """The figures of wrk's --latency output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(non_2xx.group(1)) if non_2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return Run(scenario, server, rps, p50, p99, requests, errors)


def wrk(url: str, script: str, args: list[str], *, scenario: str, server: str, seconds: int,
        connections: int = 32, threads: int = 2) -> Run:
    """One wrk run against ``url`` with a script of bench/lua and its arguments."""
    command = [wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
               "-s", str(LUA / script), url, "--", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise SystemExit(f"bench: wrk failed: {result.stderr or result.stdout}")
    return parse(result.stdout, scenario, server)


def summary(runs: list[Run]) -> dict:
    """min/median/max requests per second, median p50/p99 and median CPU per 1,000 requests of a
    scenario's runs on one server."""
    rates = [r.requests_per_second for r in runs]
    found = {
        "rps_min": min(rates), "rps_median": statistics.median(rates), "rps_max": max(rates),
        "p50_ms": statistics.median(r.p50_ms for r in runs), "p99_ms": statistics.median(r.p99_ms for r in runs),
        "errors": sum(r.errors for r in runs), "runs": len(runs),
    }
    for name in ("app_cpu_s_per_1k", "db_cpu_s_per_1k"):
        measured = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        if measured:
            found[name] = round(statistics.median(measured), 4)
    return found


def pgbench(bin_dir: Path, socket_dir: str, database: str, org: str, tool: str, *, seconds: int,
            work: Path) -> float:
    """Transactions/s of the same tenant-filtered single-row select Tolstoy's GET /tools/{id} runs."""
    script = work / "get_tool.pgbench"
    sql = (Path(__file__).resolve().parent.parent / "sql" / "tools.sql").read_text()
    query = sql.split("-- name: get^", 1)[1].split("-- name:", 1)[0]
    query = "\n".join(line for line in query.splitlines() if not line.startswith("--")).strip()
    query = query.replace(":org_id", f"'{org}'::uuid").replace(":id", f"'{tool}'::uuid")
    script.write_text(" ".join(query.split()) + "\n")
    command = [str(bin_dir / "pgbench"), "-h", socket_dir, "-U", "postgres", "-n", "-c", "32", "-j", "2",
               "-T", str(seconds), "-M", "extended", "-f", str(script), database]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0:
        raise SystemExit(f"bench: pgbench failed: {result.stderr}")
    return float(re.search(r"tps = ([\d.]+)", result.stdout).group(1))
