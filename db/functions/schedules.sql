-- Schedule triggers: which are due, firing them (queueing runs), and when the next one is.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_claim_schedules(worker text, max_schedules integer, as_of timestamptz)
returns table (org_id uuid, id uuid, flow_id uuid, cron text, timezone text, catch_up text,
               next_run_at timestamptz, now timestamptz)
language plpgsql security definer set search_path = public, pg_temp as $$
begin
    if worker is null or worker = '' or max_schedules < 1 or max_schedules > 1000 then
        raise exception 'tolstoy_claim_schedules: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    return query
    select t.org_id, t.id, t.flow_id, t.cron, t.timezone, t.catch_up, t.next_run_at, coalesce(as_of, tolstoy_now())
    from flow_triggers t
    where t.type = 'schedule' and t.enabled and t.next_run_at <= coalesce(as_of, tolstoy_now())
    order by t.next_run_at
    limit max_schedules
    for update skip locked;
end;
$$;

comment on function tolstoy_claim_schedules(text, integer, timestamptz) is
    'Locks (SKIP LOCKED) up to max_schedules enabled schedules of any organization due at as_of (null: now).';

create or replace function tolstoy_fire_schedules(as_of timestamptz, fires jsonb) returns jsonb
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    fire jsonb;
    org uuid;
    flow uuid;
    flow_version integer;
    scheduled timestamptz;
    queued uuid;
    refusal text;
    fired jsonb := '[]';
    previous text := current_setting('app.org_id', true);
begin
    if jsonb_typeof(fires) is distinct from 'array' or jsonb_array_length(fires) > 1000 then
        raise exception 'tolstoy_fire_schedules: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    -- Admission locks each organization's usage row until this transaction ends: in organization
    -- order, two workers firing schedules of the same organizations cannot wait on each other.
    for fire in select f.value from jsonb_array_elements(fires) as f
                order by f.value ->> 'org_id', f.value ->> 'id' loop
        org := (fire ->> 'org_id')::uuid;
        scheduled := (fire ->> 'scheduled_at')::timestamptz;
        perform set_config('app.org_id', org::text, true);
        update flow_triggers t
        set next_run_at = (fire ->> 'next_run_at')::timestamptz,
            last_fired_at = case when scheduled is null then t.last_fired_at else coalesce(as_of, clock_now) end
        where t.org_id = org and t.id = (fire ->> 'id')::uuid and t.type = 'schedule' and t.enabled
          and t.next_run_at = (fire ->> 'due')::timestamptz and t.next_run_at <= coalesce(as_of, clock_now)
          and ((fire ->> 'next_run_at') is null or (fire ->> 'next_run_at')::timestamptz > t.next_run_at)
          and (scheduled is null or scheduled between t.next_run_at and coalesce(as_of, clock_now))
        returning t.flow_id into flow;
        continue when not found or scheduled is null;
        select f.version into flow_version from flows f where f.org_id = org and f.id = flow;
        begin
            select (q.run).id into queued
            from tolstoy_queue_run(org, flow, flow_version, null,
                                   jsonb_build_object('trigger', jsonb_build_object(
                                       'id', fire ->> 'id', 'type', 'schedule',
                                       'scheduledAt', to_char(scheduled at time zone 'UTC',
                                                              'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))),
                                   format('tolstoy:schedule:%s:%s', fire ->> 'id',
                                          extract(epoch from scheduled)::numeric),
                                   null) as q;
        exception when sqlstate 'TQ001' or sqlstate 'TQ002' then
            -- Over a quota: the slot is skipped (the schedule has moved on) and the trigger says why.
            get stacked diagnostics refusal = message_text;
            update flow_triggers t
            set last_skipped_at = coalesce(as_of, clock_now), last_skip_reason = refusal
            where t.org_id = org and t.id = (fire ->> 'id')::uuid;
            continue;
        end;
        fired := fired || jsonb_build_object('trigger_id', fire ->> 'id', 'org_id', org, 'execution_id', queued,
                                             'scheduled_at', scheduled);
    end loop;
    perform set_config('app.org_id', coalesce(previous, ''), true);
    return fired;
end;
$$;

comment on function tolstoy_fire_schedules(timestamptz, jsonb) is
    'Advances claimed schedules (only from the due time the worker saw) and queues their runs, each acting for its '
    'organization, in organization order; a run a quota refuses skips its slot (last_skipped_at, last_skip_reason). '
    'Returns [{trigger_id, org_id, execution_id, scheduled_at}] of the runs queued.';

create or replace function tolstoy_next_schedule() returns timestamptz
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return (
        select min(t.next_run_at) from flow_triggers t
        where t.type = 'schedule' and t.enabled and t.next_run_at is not null);
end;
$$;

comment on function tolstoy_next_schedule() is 'The earliest next_run_at of an enabled schedule, across organizations.';
