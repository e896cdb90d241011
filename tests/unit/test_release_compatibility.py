"""Expand before contract, checked against the previous release (ops/previous-release): its workers run
on this tree's schema while a deploy rolls (docs/deploying.md, "Upgrading with runs in flight"). Every
SQL function its queries call keeps its signature, and every column of its tables keeps its name and
type. A change that breaks either is a new function or column beside the old one, and the old one goes
in a later release. (What an answer means is the slow tests/ops/test_mixed_versions.py's to check.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUNCTION = re.compile(r"^CREATE FUNCTION public\.(\w+)\((.*)$", re.M)
TABLE = re.compile(r"^CREATE TABLE public\.(\w+) \(\n(.*?)\n\)", re.M | re.S)
COLUMN = re.compile(r"^    (\w+) (.+?)(?: DEFAULT .*| NOT NULL.*|,)?$")


def previous_release() -> tuple[str, dict[str, str]]:
    """The commit ops/previous-release names and its files (db/schema.sql, sql/*.sql) as text."""
    lines = [line.strip() for line in (ROOT / "ops" / "previous-release").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    commit = lines[0]
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
                                                     capture_output=True).returncode != 0:
        message = f"the previous release {commit} is not in this clone (git fetch --unshallow)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", commit, "sql/"],
                           capture_output=True, text=True, check=True).stdout.split()
    files = {}
    for name in ["db/schema.sql", *names]:
        files[name] = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{name}"],
                                     capture_output=True, text=True, check=True).stdout
    return commit, files


def functions(schema: str) -> dict[str, set[str]]:
    """Function name → its signatures (arguments and return type, as pg_dump writes them)."""
    found: dict[str, set[str]] = {}
    for name, rest in FUNCTION.findall(schema):
        found.setdefault(name, set()).add(rest)
    return found


def columns(schema: str) -> dict[tuple[str, str], str]:
    """(table, column) → type, from the dump's CREATE TABLE blocks (constraints left out)."""
    found = {}
    for table, body in TABLE.findall(schema):
        for line in body.splitlines():
            match = COLUMN.match(line)
            if match and match[1] != "CONSTRAINT":
                found[(table, match[1])] = match[2]
    return found


def test_every_function_the_previous_release_calls_keeps_its_signature():
    commit, files = previous_release()
    queries = "\n".join(text for name, text in files.items() if name.startswith("sql/"))
    before, now = functions(files["db/schema.sql"]), functions((ROOT / "db" / "schema.sql").read_text())
    called = {name for name in before if re.search(rf"\b{name}\s*\(", queries)}
    assert len(called) >= 10, sorted(called)  # the parse found the engine's functions
    changed = {name: sorted(before[name] - now.get(name, set())) for name in called if before[name] - now.get(name, set())}
    assert changed == {}, f"functions {commit[:12]}'s queries call, changed or gone (keep the old one as a wrapper)"


def test_every_column_of_the_previous_release_keeps_its_name_and_type():
    commit, files = previous_release()
    before, now = columns(files["db/schema.sql"]), columns((ROOT / "db" / "schema.sql").read_text())
    assert len(before) >= 100  # the parse found the tables
    changed = {f"{table}.{column}": (kind, now.get((table, column))) for (table, column), kind in before.items()
               if now.get((table, column)) != kind}
    assert changed == {}, f"columns of {commit[:12]} renamed, retyped or dropped (contract in a later release)"


def test_the_checks_see_a_changed_signature_and_a_dropped_column():
    schema = ("CREATE FUNCTION public.f(a integer) RETURNS jsonb\n"
              "CREATE TABLE public.t (\n    id uuid NOT NULL,\n    name text,\n    CONSTRAINT c CHECK (true)\n)\n")
    changed = schema.replace("f(a integer)", "f(a integer, b text)").replace("    name text,\n", "")
    assert functions(schema)["f"] - functions(changed)["f"] == {"a integer) RETURNS jsonb"}
    assert columns(schema) == {("t", "id"): "uuid", ("t", "name"): "text"}
    assert ("t", "name") not in columns(changed)
