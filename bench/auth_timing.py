"""Benchmark: a valid and an invalid API key take the same time to check.

Checking a key is one HMAC plus one indexed lookup by the hash, whichever the
key; the admin token is compared with hmac.compare_digest. This times exactly
what the tenant middleware does to authenticate (hash, then
tolstoy_authenticate() on a real PostgreSQL) for a valid and for an invalid
key, and reports the medians and their difference against the noise.

    .venv/bin/python bench/auth_timing.py [--requests 2000]

Exits 1 when the medians differ by more than the noise (the larger of the two
interquartile ranges).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from falcon import testing

from tolstoy.api import tenancy as auth
from tolstoy.api.app import create_app
from tolstoy.config import Config
from tolstoy.db import embedded, migrate
from tolstoy.db.database import Database
from tolstoy.db.queries import SQL

ADMIN = "bench-admin-" + "a" * 40


def timings(db, secret: str, key: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        db.one(SQL.api_keys.authenticate, key_hash=auth.key_hash(secret, key))
        samples.append(time.perf_counter() - started)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")
    if not url:
        _server, url = embedded.start(tempfile.mkdtemp(prefix="tolstoy-bench-"), database="bench", cleanup="delete")
    migrate.upgrade(url)
    config = Config.from_env({"DATABASE_URL": migrate.as_role(url), "TOLSTOY_AUTH_MODE": "api_key",
                              "TOLSTOY_API_KEY_SECRET": "s" * 40, "TOLSTOY_ADMIN_TOKEN": ADMIN})
    db = Database.from_config(config)
    db.open(wait=True)
    client = testing.TestClient(create_app(config, db))
    key = client.simulate_post("/organizations", json={"name": "bench"},
                               headers={"Authorization": f"Bearer {ADMIN}"}).json["apiKey"]
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")  # same length, same prefix
    secret = config.api_key_secret
    timings(db, secret, key, 200)  # warm up
    timings(db, secret, wrong, 200)
    good, bad = [], []
    for _ in range(10):  # interleave, so drift hits both alike
        good += timings(db, secret, key, args.requests // 10)
        bad += timings(db, secret, wrong, args.requests // 10)

    def summary(samples):
        q = statistics.quantiles(samples, n=4)
        return statistics.median(samples) * 1e6, (q[2] - q[0]) * 1e6

    good_median, good_iqr = summary(good)
    bad_median, bad_iqr = summary(bad)
    noise = max(good_iqr, bad_iqr)
    difference = abs(good_median - bad_median)
    print(f"valid key: median {good_median:.0f} µs (IQR {good_iqr:.0f}); "
          f"invalid key: median {bad_median:.0f} µs (IQR {bad_iqr:.0f}); "
          f"difference {difference:.0f} µs vs noise {noise:.0f} µs")
    return 0 if difference <= noise else 1


if __name__ == "__main__":
    sys.exit(main())
