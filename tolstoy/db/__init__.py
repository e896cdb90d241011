"""The data layer: the only code that talks to PostgreSQL.

``database`` (pool, transactions, the query verbs, error translation),
``queries`` (named SQL loaded from ``sql/``), ``stores`` (a table's queries
behind plain methods), ``migrate`` (dbmate) and ``embedded`` (pgserver for
development and tests). Nothing here knows HTTP or the engine.
"""
