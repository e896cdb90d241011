"""An index whose columns lead another index of its table (same order, same sort and operator
classes, neither partial nor on expressions) serves no lookup the longer one does not, and costs a
write on every insert and every update that is not HOT: flow_runs and execution_logs each kept one on
(org_id, id) beside their primary key on (org_id, id, created_at) until migration
lookups_by_id_use_the_primary_keys. Over the catalog, so the next one is caught the day it is made.
A unique index is never redundant (it enforces something), nor is a partition's own index (it follows
its parent's)."""

from __future__ import annotations

REDUNDANT = """
select a.indrelid::regclass::text as "table", a.indexrelid::regclass::text as index,
       b.indexrelid::regclass::text as led_by
from pg_index a
join pg_index b on b.indrelid = a.indrelid and b.indexrelid <> a.indexrelid
join pg_class ia on ia.oid = a.indexrelid
join pg_class ib on ib.oid = b.indexrelid
where ia.relnamespace = 'public'::regnamespace and ia.relam = ib.relam
  and not a.indisunique and a.indpred is null and b.indpred is null and a.indexprs is null and b.indexprs is null
  and a.indnkeyatts <= b.indnkeyatts
  and (a.indkey::int2[])[0:a.indnkeyatts - 1] = (b.indkey::int2[])[0:a.indnkeyatts - 1]
  and (a.indoption::int2[])[0:a.indnkeyatts - 1] = (b.indoption::int2[])[0:a.indnkeyatts - 1]
  and (a.indclass::oid[])[0:a.indnkeyatts - 1] = (b.indclass::oid[])[0:a.indnkeyatts - 1]
  and (a.indcollation::oid[])[0:a.indnkeyatts - 1] = (b.indcollation::oid[])[0:a.indnkeyatts - 1]
  -- Two identical indexes: report the later one only.
  and (a.indnkeyatts < b.indnkeyatts or a.indexrelid > b.indexrelid)
  and not exists (select 1 from pg_inherits h where h.inhrelid = a.indrelid)
order by 1, 2
"""


def test_no_index_is_led_by_the_columns_of_another(db):
    with db.pool.connection() as conn:
        redundant = conn.execute(REDUNDANT).fetchall()
    assert redundant == [], "drop these indexes, the other index of their table serves their lookups: " + ", ".join(
        f"{r['index']} (led by {r['led_by']})" for r in redundant)


def test_the_check_finds_a_redundant_index(db):
    """The query above, on an index made to be redundant (and undone with the transaction)."""
    with db.pool.connection() as conn, conn.transaction(force_rollback=True):
        conn.execute("create table redundant_probe (a integer, b integer, c integer)")
        conn.execute("create index redundant_probe_ab on redundant_probe (a, b)")
        conn.execute("create index redundant_probe_abc on redundant_probe (a, b, c)")
        conn.execute("create index redundant_probe_b on redundant_probe (b)")
        conn.execute("create unique index redundant_probe_a on redundant_probe (a)")
        found = conn.execute(REDUNDANT).fetchall()
    assert [(r["index"], r["led_by"]) for r in found] == [("redundant_probe_ab", "redundant_probe_abc")]
