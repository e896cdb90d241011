"""The queue gauges of /metrics when no database answers: no samples, no scrape error."""

from __future__ import annotations

from tolstoy.api import health
from tolstoy.db.database import Database


def test_no_queue_samples_when_the_database_does_not_answer(tmp_path):
    db = Database(f"postgresql://nobody@/none?host={tmp_path}", min_size=0, max_size=1, timeout=0.5)
    db.open()
    try:
        assert list(health.QueueCollector(db).collect()) == []
    finally:
        db.close()
