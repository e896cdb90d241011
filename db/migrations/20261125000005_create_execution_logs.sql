-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

create type execution_status as enum (
    'pending', 'queued', 'running', 'started', 'completed', 'failed', 'skipped', 'cancelled'
);

comment on type execution_status is 'Lifecycle of a run or a step, as the API spells it.';

create table execution_logs (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    flow_id uuid not null,
    user_id uuid,
    execution_id text not null,
    step_key text not null,
    status execution_status not null,
    inputs jsonb not null,
    outputs jsonb,
    error jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint execution_logs_pkey primary key (org_id, id),
    constraint execution_logs_flow_id_fkey foreign key (org_id, flow_id)
        references flows (org_id, id) on delete restrict,
    constraint execution_logs_user_id_fkey foreign key (org_id, user_id)
        references users (org_id, id) on delete restrict,
    constraint execution_logs_execution_id_length check (char_length(execution_id) between 1 and 200),
    constraint execution_logs_step_key_length check (char_length(step_key) between 1 and 200),
    constraint execution_logs_inputs_object check (jsonb_typeof(inputs) = 'object'),
    constraint execution_logs_outputs_object check (outputs is null or jsonb_typeof(outputs) = 'object')
);

comment on table execution_logs is 'Audit trail: one row per step event of a flow run.';
comment on column execution_logs.user_id is 'Actor (X-User-ID) who wrote the log or started the run; null for system runs.';
comment on column execution_logs.execution_id is 'Groups the logs of one run; chosen by the client or the engine.';
comment on column execution_logs.error is 'Any JSON value describing the failure; null when the step did not fail.';

create index execution_logs_org_id_created_at_id_idx
    on execution_logs (org_id, created_at desc, id desc);
-- Each filter gets an index that also serves the keyset order; flow_id and
-- user_id ones double as the indexes behind the restrict-on-delete checks.
create index execution_logs_org_id_flow_id_created_at_id_idx
    on execution_logs (org_id, flow_id, created_at desc, id desc);
create index execution_logs_org_id_execution_id_created_at_id_idx
    on execution_logs (org_id, execution_id, created_at desc, id desc);
create index execution_logs_org_id_user_id_created_at_id_idx
    on execution_logs (org_id, user_id, created_at desc, id desc);
create index execution_logs_org_id_status_created_at_id_idx
    on execution_logs (org_id, status, created_at desc, id desc);

create trigger execution_logs_touch_updated_at
    before update on execution_logs
    for each row execute function tolstoy_touch_updated_at();

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop table execution_logs;
drop type execution_status;
