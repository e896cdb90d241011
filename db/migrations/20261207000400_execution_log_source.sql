-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic. The statement timeout
-- bounds the one UPDATE below, which touches the client-written rows only.
set local lock_timeout = '5s';
set local statement_timeout = '300s';

-- execution_logs.source: who wrote a row of the audit trail.
--   engine  Tolstoy itself: the workers' step and run events (tolstoy_checkpoint, tolstoy_claim,
--           tolstoy_queue_run, tolstoy_subflow, the signal functions), run changes made through the
--           API (cancel, resolve, signals: sql/execution_logs.sql, name: write) and direct action
--           calls (sql/webhooks.sql, name: action_logged). None of them names the column: they get
--           the default.
--   client  POST /execution-logs, through the one statement that writes for a client
--           (sql/execution_logs.sql, name: insert), which says 'client' itself.
-- A client may write logs under any executionId, a real run's too, so the API shows `source` on
-- every row, the console marks client rows on a run's timeline, step keys the engine reserves
-- ("$flow", "onFailure.<id>", "<id>[<n>]") are refused to clients, and engine rows cannot be
-- changed or deleted through the API: a client's row never passes for the engine's.
create type execution_log_source as enum ('engine', 'client');

comment on type execution_log_source is
    'Who wrote an execution log row: engine (Tolstoy itself) or client (POST /execution-logs).';

-- A constant default: PostgreSQL keeps it in the catalog for the rows that exist, so no partition
-- is rewritten, and partitions made later (tolstoy_ensure_partitions) have the column too.
alter table execution_logs add column source execution_log_source not null default 'engine';

comment on column execution_logs.source is
    'engine: written by Tolstoy (workers, run changes made through the API, action calls); client: '
    'written through POST /execution-logs (shown as such; never changed into an engine row).';

-- The rows that exist were written before the column did, by either. Every row the engine writes
-- names a run of its organization and of that flow as execution_id (or no flow at all: a direct
-- action call), so a row with a flow whose execution_id is no run of that flow was a client's.
-- A client row that borrowed a real run's id cannot be told from the engine's own and stays
-- "engine", as do engine rows of runs that outlived their logs' month (none, unless retention
-- dropped a run's month before its logs' next month): docs/api.md says so.
-- Row-level security binds the owner too (forced), on both tables: without lifting it the owner
-- would see no run and mark every row a client's. Lift it for this statement (through the parent
-- tables only their own policies apply), and keep each row's updated_at (a row a client last
-- changed long ago was not changed by this migration).
alter table execution_logs no force row level security;
alter table flow_runs no force row level security;
alter table execution_logs disable trigger execution_logs_touch_updated_at;
update execution_logs l
set source = 'client'
where l.flow_id is not null
  and not exists (
      select from flow_runs r
      where r.org_id = l.org_id and r.flow_id = l.flow_id and r.id::text = l.execution_id
  );
alter table execution_logs enable trigger execution_logs_touch_updated_at;
alter table flow_runs force row level security;
alter table execution_logs force row level security;

-- Privileges: unchanged (the API and the workers write execution_logs already; a new column of a
-- table they may insert into and select from is covered by those table grants).

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The previous application neither writes nor reads the column: rows lose their mark.
alter table execution_logs drop column source;
drop type execution_log_source;
