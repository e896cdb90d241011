-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- POST /actions/{id}/execute calls a tool while a Gunicorn worker waits, so one
-- organization's slow tool could hold every worker. Two bounds:
--
-- actions.timeout_ms: how long that call may take end to end (null: the
-- server's default, TOLSTOY_SYNC_EXECUTE_TIMEOUT_MS; the server also caps it).
--
-- sync_execute_slots: at most TOLSTOY_SYNC_EXECUTE_PER_ORG such calls of one
-- organization at a time across every API process. A call takes a free slot
-- (SKIP LOCKED, so two requests never take the same one) until it ends, or until
-- expires_at if its process dies; without a free slot the API answers 429. The
-- rows are scratch state, so the table is unlogged: after a crash it is empty,
-- which frees every slot, as it should.

alter table actions add column timeout_ms integer;

-- squawk-ignore constraint-missing-not-valid
alter table actions add constraint actions_timeout_ms_range check (timeout_ms between 100 and 120000);

comment on column actions.timeout_ms is
    'End-to-end limit of POST /actions/{id}/execute for this action, in ms (null: the server default).';

create unlogged table sync_execute_slots (
    org_id uuid not null,
    slot integer not null,
    holder uuid,
    expires_at timestamptz not null default '-infinity',
    constraint sync_execute_slots_pkey primary key (org_id, slot),
    constraint sync_execute_slots_org_id_fkey foreign key (org_id)
        references organizations (id) on delete cascade
);

comment on table sync_execute_slots is
    'Concurrent synchronous action executions per organization (a slot is free once expires_at has passed).';

alter table sync_execute_slots enable row level security;
alter table sync_execute_slots force row level security;
create policy tenant_isolation on sync_execute_slots
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop table sync_execute_slots;
-- The check constraint goes with its column.
alter table actions drop column timeout_ms;
