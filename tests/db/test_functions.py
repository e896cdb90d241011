"""db/functions/ holds the current source of every SQL function the migrations define: each file, run
in a migrated database, must change nothing (pg_get_functiondef and the comment stay as they are),
every function of the schema must be created and commented by one file, and no file may create a
function the migrations do not (a body that drifted either way fails here)."""

from __future__ import annotations

import difflib
from pathlib import Path

import psycopg
import pytest

FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "db" / "functions"

# Every function of the public schema that no extension brought: its definition (what PostgreSQL
# would dump, attributes included) and its comment.
LIVE = """
select p.oid::regprocedure::text as name, pg_get_functiondef(p.oid) as definition,
       obj_description(p.oid, 'pg_proc') as comment
from pg_proc p
where p.pronamespace = 'public'::regnamespace and p.prokind in ('f', 'p')
  and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                  and d.deptype = 'e')
"""

# Which function each statement of a file created (or replaced) or commented on, as PostgreSQL saw it:
# no parsing of the files, so any spelling of `create function` counts.
RECORDER = """
create temporary table seen_ddl (tag text, name text);
create function test_functions_record_ddl() returns event_trigger language plpgsql as $$
begin
    insert into pg_temp.seen_ddl
    select c.command_tag, c.objid::regprocedure::text
    from pg_event_trigger_ddl_commands() c where c.classid = 'pg_proc'::regclass;
end;
$$;
create event trigger test_functions_record_ddl on ddl_command_end
    when tag in ('CREATE FUNCTION', 'COMMENT') execute function test_functions_record_ddl();
"""


def files() -> list[Path]:
    return sorted(FUNCTIONS_DIR.glob("*.sql"))


def run_the_files(url: str) -> tuple[dict, dict, dict]:
    """The live functions before, after running every file (in a transaction rolled back), and what each
    file created and commented on."""
    with psycopg.connect(url) as conn:  # the superuser: it may replace any owner's function
        try:
            before = {name: (definition, comment) for name, definition, comment in conn.execute(LIVE)}
            conn.execute(RECORDER)
            made: dict[str, dict[str, set]] = {}
            for path in files():
                conn.execute(path.read_text().encode())
                rows = conn.execute("delete from pg_temp.seen_ddl returning tag, name").fetchall()
                made[path.name] = {tag: {name for t, name in rows if t == tag} for tag in ("CREATE FUNCTION", "COMMENT")}
            after = {name: (definition, comment) for name, definition, comment in conn.execute(LIVE)
                     if name != "test_functions_record_ddl()"}
        finally:
            conn.rollback()
    return before, after, made


@pytest.fixture(scope="module")
def ran(clones, url_for):
    """The files run once in a fresh migrated database (not the template itself, which clones are
    made from while no one else is connected to it)."""
    name = clones.take()
    try:
        yield run_the_files(url_for(name))
    finally:
        clones.drop(name)


def test_each_file_changes_no_function_of_the_migrated_database(ran):
    before, after, _ = ran
    drifted = []
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) != after.get(name):
            was, now = before.get(name, ("", None)), after.get(name, ("", None))
            diff = "\n".join(difflib.unified_diff(
                (was[0] + f"\ncomment: {was[1]}").splitlines(), (now[0] + f"\ncomment: {now[1]}").splitlines(),
                "migrations", "db/functions", lineterm="", n=1))
            drifted.append(f"{name}:\n{diff}")
    assert not drifted, "db/functions/ and the migrations disagree (copy the newest body into both):\n" + \
        "\n".join(drifted[:5])


def test_every_function_has_one_file_that_creates_and_comments_it(ran):
    before, _, made = ran
    created = [name for each in made.values() for name in each["CREATE FUNCTION"]]
    commented = {name for each in made.values() for name in each["COMMENT"]}
    assert sorted(set(before) - set(created)) == [], "functions with no source in db/functions/"
    assert sorted(name for name in set(created) if created.count(name) > 1) == [], "defined in two files"
    assert sorted(set(created) - set(before)) == [], "db/functions/ defines functions no migration does"
    assert sorted(set(created) - commented) == [], "every function carries a COMMENT, in its file too"


def test_the_folder_opens_with_its_tour():
    tour = (FUNCTIONS_DIR / "README.md").read_text()
    for name in (path.name for path in files()):
        assert name in tour, f"db/functions/README.md does not say what {name} holds"
