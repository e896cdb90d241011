-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A run's flow.* events: the trigger built the event's payload (two timestamps spelled by tolstoy_iso)
-- and ran an insert into the outbox for every claim and every finish, before finding that no webhook
-- of the organization subscribes, as most do not. It asks first now, with one probe, as the step
-- events' trigger does: about 0.5 ms of PostgreSQL's CPU per run less where nobody listens
-- (docs/performance.md, "What PostgreSQL does per run").
create or replace function tolstoy_run_webhook_events() returns trigger
language plpgsql as $$
declare
    kinds text[];
    payload jsonb;
begin
    if old.started_at is null and new.started_at is not null then
        kinds := array['flow.started'];
    end if;
    if new.status is distinct from old.status and new.status in ('completed', 'failed', 'cancelled') then
        kinds := coalesce(kinds, '{}') || ('flow.' || new.status::text);
    end if;
    -- Most organizations subscribe to no run events: one index probe, and no payload built for nobody.
    if kinds is null or not exists (select 1 from webhooks w
                                    where w.org_id = new.org_id and w.enabled and w.event_types && kinds) then
        return null;
    end if;
    payload := jsonb_build_object(
        'executionId', new.id, 'flowId', new.flow_id, 'flowVersion', new.flow_version, 'userId', new.user_id,
        'status', new.status, 'error', new.error, 'retryOf', new.retry_of,
        'startedAt', tolstoy_iso(new.started_at), 'finishedAt', tolstoy_iso(new.finished_at));
    if 'flow.started' = any(kinds) then
        perform tolstoy_webhook_emit(new.org_id, 'flow.started', payload || '{"status": "running"}');
    end if;
    if new.status is distinct from old.status and new.status in ('completed', 'failed', 'cancelled') then
        perform tolstoy_webhook_emit(new.org_id, 'flow.' || new.status::text, payload);
    end if;
    return null;
end;
$$;

comment on function tolstoy_run_webhook_events() is
    'AFTER UPDATE trigger on flow_runs: the run''s flow.* events, in the statement that changes the run.';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function tolstoy_run_webhook_events() returns trigger
language plpgsql as $$
declare
    payload jsonb := jsonb_build_object(
        'executionId', new.id, 'flowId', new.flow_id, 'flowVersion', new.flow_version, 'userId', new.user_id,
        'status', new.status, 'error', new.error, 'retryOf', new.retry_of,
        'startedAt', tolstoy_iso(new.started_at), 'finishedAt', tolstoy_iso(new.finished_at));
begin
    if old.started_at is null and new.started_at is not null then
        perform tolstoy_webhook_emit(new.org_id, 'flow.started', payload || '{"status": "running"}');
    end if;
    if new.status is distinct from old.status and new.status in ('completed', 'failed', 'cancelled') then
        perform tolstoy_webhook_emit(new.org_id, 'flow.' || new.status::text, payload);
    end if;
    return null;
end;
$$;

comment on function tolstoy_run_webhook_events() is
    'AFTER UPDATE trigger on flow_runs: the run''s flow.* events, in the statement that changes the run.';
