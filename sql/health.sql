-- name: ping$
-- Cheapest round trip that proves the database answers.
select 1;

-- name: migration_version$
-- Newest migration dbmate applied.
select max(version) from schema_migrations;

-- name: table_counts
-- Approximate row counts from the statistics collector: exact counts would scan tables.
select relname as table_name, n_live_tup as approximate_rows
from pg_stat_user_tables
where schemaname = current_schema()
  and relname in ('organizations', 'users', 'tools', 'actions', 'flows',
                  'flow_versions', 'execution_logs')
order by relname;
