-- Outbound event webhooks: events placed in per-webhook lines, claimed under a lease in order, recorded, pruned.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_webhook_emit(org uuid, kind text, payload jsonb) returns integer
language plpgsql as $$
declare
    event uuid := gen_random_uuid();
    fanned integer;
begin
    insert into webhook_deliveries (org_id, webhook_id, event_id, event_type, data, next_attempt_at)
    select w.org_id, w.id, event, kind, payload, now()
    from webhooks w
    where w.org_id = org and w.enabled and kind = any(w.event_types);
    get diagnostics fanned = row_count;
    return fanned;
end;
$$;

comment on function tolstoy_webhook_emit(uuid, text, jsonb) is
    'Writes one event to the outbox for each enabled webhook of org subscribed to its type; returns how many.';

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

create or replace function tolstoy_step_webhook_events() returns trigger
language plpgsql as $$
declare
    kinds text[];
    kind text;
    flow uuid;
begin
    if tg_op = 'INSERT' then
        kinds := case new.status
                     when 'skipped' then array['step.skipped']
                     when 'running' then array['step.started']
                     when 'waiting' then array['step.started']
                     else array['step.started', 'step.' || new.status] end;
    elsif new.status in ('completed', 'failed', 'skipped', 'outcome_unknown') then
        kinds := array['step.' || new.status];
    elsif old.status in ('completed', 'failed', 'skipped') then
        kinds := array['step.started'];
    else
        return null;
    end if;
    -- Most organizations subscribe to no step events: one index probe, nothing more.
    if not exists (select 1 from webhooks w
                   where w.org_id = new.org_id and w.enabled and w.event_types && kinds) then
        return null;
    end if;
    select r.flow_id into flow from flow_runs r
    where r.org_id = new.org_id and r.id = new.run_id and r.created_at = new.run_created_at;
    foreach kind in array kinds loop
        perform tolstoy_webhook_emit(new.org_id, kind, jsonb_build_object(
            'executionId', new.run_id, 'flowId', flow, 'stepId', new.step_id,
            'status', case when kind = 'step.started' then 'running' else new.status end,
            'attempt', new.attempt, 'error', case when kind = 'step.started' then null else new.error end,
            'durationMs', case when kind = 'step.started' then null else new.duration_ms end,
            'outputs', case when kind = 'step.completed' then new.outputs end));
    end loop;
    return null;
end;
$$;

comment on function tolstoy_step_webhook_events() is
    'AFTER INSERT/UPDATE trigger on flow_run_steps: the step.* events, in the statement that writes the step.';

create or replace function tolstoy_place_deliveries() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    line record;
    delivery record;
begin
    -- Placed already by an earlier firing of this commit (or deleted since): one key lookup, so a
    -- transaction writing thousands of events does not look for the unplaced ones thousands of times.
    if (select d.placed from webhook_deliveries d where d.org_id = new.org_id and d.id = new.id)
            is distinct from false then
        return null;
    end if;
    for line in
        select distinct d.org_id, d.webhook_id
        from webhook_deliveries d
        where not d.placed
        order by d.org_id, d.webhook_id
    loop
        insert into webhook_lines as l (org_id, webhook_id, due_at)
        values (line.org_id, line.webhook_id, clock_now)
        on conflict (org_id, webhook_id) do update
        set due_at = coalesce(l.due_at, excluded.due_at);
    end loop;
    -- In the order they were written: a transaction's own events keep their order.
    for delivery in
        select d.org_id, d.id from webhook_deliveries d where not d.placed order by d.seq
    loop
        update webhook_deliveries
        set seq = default, placed = true
        where org_id = delivery.org_id and id = delivery.id;
    end loop;
    return null;
end;
$$;

comment on function tolstoy_place_deliveries() is
    'Deferred constraint trigger on webhook_deliveries: at commit, gives the transaction''s deliveries their '
    'seq under their webhook lines'' locks (commit order per webhook) and makes idle lines due.';

create or replace function webhook_deliveries_notify() returns trigger
language plpgsql as $$
begin
    if exists (select 1 from inserted) then
        perform pg_notify('tolstoy_runs', 'webhook');
    end if;
    return null;
end;
$$;

comment on function webhook_deliveries_notify() is
    'AFTER INSERT statement trigger: NOTIFY tolstoy_runs when deliveries were queued, so an idle worker delivers.';

create or replace function tolstoy_claim_deliveries(worker text, max_deliveries integer,
                                                    lease_seconds double precision)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    claimed jsonb := '[]';
    candidate record;
    line webhook_lines;
    head webhook_deliveries;
    taken webhook_deliveries;
    hook webhooks;
    lease interval := make_interval(secs => lease_seconds);
begin
    if worker is null or worker = '' or max_deliveries < 1 or max_deliveries > 1000 or lease_seconds <= 0
            or lease_seconds > 3600 then
        raise exception 'tolstoy_claim_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for candidate in
        select x.org_id, x.webhook_id
        from (select l.org_id, l.webhook_id, l.served_at,
                     row_number() over (partition by l.org_id order by l.served_at nulls first, l.webhook_id) as turn
              from webhook_lines l
              where l.due_at <= clock_now) as x
        cross join lateral (select max(o.served_at) as served_at
                            from webhook_lines o where o.org_id = x.org_id) as org_turn
        order by x.turn, org_turn.served_at nulls first, x.served_at nulls first, x.org_id, x.webhook_id
        -- Spare candidates: another worker claiming at the same moment holds some of the first.
        limit max_deliveries * 2 + 8
    loop
        exit when jsonb_array_length(claimed) >= max_deliveries;
        select * into line from webhook_lines l
        where l.org_id = candidate.org_id and l.webhook_id = candidate.webhook_id and l.due_at <= clock_now
        for update skip locked;
        continue when not found;
        select * into head from webhook_deliveries d
        where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state in ('pending', 'sending')
        order by d.seq
        limit 1
        for update skip locked;
        if not found then
            -- Finished meanwhile, or its first delivery locked (being cancelled): look again later.
            update webhook_lines l
            set due_at = case when exists (select 1 from webhook_deliveries d
                                           where d.org_id = line.org_id and d.webhook_id = line.webhook_id
                                             and d.state in ('pending', 'sending'))
                              then clock_now + interval '1 second' end
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'sending' and head.lease_expires_at >= clock_now then
            update webhook_lines l set due_at = head.lease_expires_at
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'pending' and head.next_attempt_at > clock_now then
            update webhook_lines l set due_at = head.next_attempt_at
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        select * into hook from webhooks w where w.org_id = line.org_id and w.id = line.webhook_id;
        if head.state = 'pending' and not hook.enabled then
            -- Disabled while these were queued: they are not sent.
            update webhook_deliveries d
            set state = 'cancelled', next_attempt_at = null, finished_at = clock_now,
                last_error = coalesce(hook.disabled_reason, 'The webhook was disabled.')
            where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state = 'pending';
            update webhook_lines l
            set due_at = (select d.lease_expires_at from webhook_deliveries d
                          where d.org_id = line.org_id and d.webhook_id = line.webhook_id and d.state = 'sending'
                          order by d.seq limit 1)
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'sending' then
            -- Its worker vanished: the attempt it made is logged as lost, and it is sent again.
            update webhook_deliveries d
            set attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
                lease_expires_at = clock_now + lease, last_attempt_at = clock_now,
                attempt_log = d.attempt_log || jsonb_build_object(
                    'attempt', d.attempts, 'at', tolstoy_iso(d.last_attempt_at), 'statusCode', null,
                    'durationMs', null, 'error', 'The worker sending it vanished; sent again.', 'location', null)
            where d.org_id = head.org_id and d.id = head.id
            returning * into taken;
        else
            update webhook_deliveries d
            set state = 'sending', attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
                lease_expires_at = clock_now + lease, first_attempt_at = coalesce(d.first_attempt_at, clock_now),
                last_attempt_at = clock_now
            where d.org_id = head.org_id and d.id = head.id
            returning * into taken;
        end if;
        update webhook_lines l
        set due_at = taken.lease_expires_at, served_at = tolstoy_clock_timestamp()
        where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
        claimed := claimed || jsonb_build_object(
            'org_id', taken.org_id, 'id', taken.id, 'webhook_id', taken.webhook_id, 'event_id', taken.event_id,
            'event_type', taken.event_type, 'data', taken.data, 'created_at', tolstoy_iso(taken.event_created_at),
            'token', taken.lease_token, 'url', hook.url, 'secret', encode(hook.secret, 'base64'),
            'headers', encode(hook.headers, 'base64'));
    end loop;
    return jsonb_build_object('deliveries', claimed, 'next_due', tolstoy_next_delivery(), 'now', clock_now);
end;
$$;

comment on function tolstoy_claim_deliveries(text, integer, double precision) is
    'Claims up to max_deliveries webhook deliveries of any organization, the first unfinished one of each due '
    'line, lines round-robin across organizations and webhooks; returns {deliveries, next_due, now}.';

create or replace function tolstoy_next_delivery() returns timestamptz
language plpgsql stable security definer set search_path = public, pg_temp as $$
begin
    return (
        select min(l.due_at) from webhook_lines l where l.due_at is not null);
end;
$$;

comment on function tolstoy_next_delivery() is
    'The earliest time a webhook delivery of any organization falls due (null: none is waiting).';

create or replace function tolstoy_record_delivery(worker text, org uuid, delivery uuid, token integer,
                                                   result jsonb)
returns jsonb
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    current webhook_deliveries;
    outcome text := result ->> 'outcome';
    give_up interval := make_interval(secs => coalesce((result ->> 'give_up_seconds')::double precision, 86400));
    retry_at timestamptz := clock_now + make_interval(secs => coalesce((result ->> 'retry_in_ms')::double precision, 0)
                                                          / 1000);
    hook webhooks;
    line uuid;
    disabled text;
begin
    if outcome is null or outcome not in ('delivered', 'retry', 'failed') then
        raise exception 'tolstoy_record_delivery: invalid outcome' using errcode = 'invalid_parameter_value';
    end if;
    perform set_config('app.org_id', org::text, true);
    select d.webhook_id into line from webhook_deliveries d where d.org_id = org and d.id = delivery;
    if not found then
        return jsonb_build_object('recorded', false);
    end if;
    perform 1 from webhook_lines l where l.org_id = org and l.webhook_id = line for update;
    select * into current from webhook_deliveries d
    where d.org_id = org and d.id = delivery and d.lease_owner = worker and d.lease_token = token
      and d.state = 'sending'
    for update;
    if not found then
        return jsonb_build_object('recorded', false);
    end if;
    -- No key update: events being written for this webhook (their foreign key's key-share lock) do
    -- not hold this up.
    select * into hook from webhooks w where w.org_id = org and w.id = current.webhook_id for no key update;
    if outcome <> 'delivered' and hook.enabled and clock_now - hook.failing_since >= give_up then
        -- Failing for the whole period: the webhook is disabled, this delivery given up with it.
        disabled := format('Disabled at %s: every delivery failed since %s (last: %s).',
                           tolstoy_iso(clock_now), tolstoy_iso(hook.failing_since),
                           coalesce('HTTP ' || (result ->> 'status_code'), left(result ->> 'error', 300),
                                    'no answer'));
        outcome := 'failed';
    elsif outcome = 'retry' and (retry_at - current.first_attempt_at > give_up or not hook.enabled) then
        outcome := 'failed';
    end if;
    update webhook_deliveries d
    set state = case outcome when 'delivered' then 'delivered' when 'retry' then 'pending' else 'failed' end,
        next_attempt_at = case when outcome = 'retry' then retry_at end,
        finished_at = case when outcome <> 'retry' then clock_now end,
        last_status_code = (result ->> 'status_code')::integer,
        last_error = left(result ->> 'error', 1000),
        lease_owner = null, lease_token = null, lease_expires_at = null,
        attempt_log = d.attempt_log || jsonb_build_object(
            'attempt', token, 'at', tolstoy_iso(d.last_attempt_at),
            'statusCode', (result ->> 'status_code')::integer,
            'durationMs', (result ->> 'duration_ms')::integer, 'error', left(result ->> 'error', 1000),
            'location', left(result ->> 'location', 2048))
    where d.org_id = org and d.id = delivery;
    if outcome = 'delivered' then
        if hook.failing_since is not null then
            update webhooks set failing_since = null where org_id = org and id = hook.id;
        end if;
    elsif disabled is not null then
        -- Its deliveries not sent yet are cancelled (webhooks_cancel_pending).
        update webhooks set enabled = false, disabled_reason = disabled where org_id = org and id = hook.id;
    elsif hook.failing_since is null then
        update webhooks set failing_since = clock_now where org_id = org and id = hook.id;
    end if;
    update webhook_lines l
    set due_at = (select case when n.state = 'sending' then n.lease_expires_at else n.next_attempt_at end
                  from webhook_deliveries n
                  where n.org_id = org and n.webhook_id = current.webhook_id and n.state in ('pending', 'sending')
                  order by n.seq
                  limit 1)
    where l.org_id = org and l.webhook_id = current.webhook_id;
    return jsonb_build_object('recorded', true, 'outcome', outcome, 'disabled', disabled);
end;
$$;

comment on function tolstoy_record_delivery(text, uuid, uuid, integer, jsonb) is
    'Records one attempt of a claimed webhook delivery (fenced by its lease token): delivered, retry later or '
    'failed; disables a webhook failing for the give-up period; tells the line when it is due next. Acts for '
    'org under row-level security.';

create or replace function webhooks_cancel_pending() returns trigger
language plpgsql as $$
begin
    update webhook_deliveries
    set state = 'cancelled', next_attempt_at = null, finished_at = now(),
        last_error = coalesce(new.disabled_reason, 'The webhook was disabled.')
    where org_id = new.org_id and webhook_id = new.id and state = 'pending';
    return null;
end;
$$;

comment on function webhooks_cancel_pending() is
    'AFTER UPDATE trigger on webhooks: a webhook disabled cancels its pending deliveries.';

create or replace function tolstoy_prune_deliveries(retention_days integer, batch integer)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    cutoff timestamptz;
    outbox integer;
    inbox integer;
begin
    if retention_days < 1 or batch is null or batch < 1 or batch > 100000 then
        raise exception 'tolstoy_prune_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    if retention_days is null then
        return jsonb_build_object('deliveries', 0, 'inbox', 0);
    end if;
    cutoff := clock_now - make_interval(days => retention_days);
    delete from webhook_deliveries d
    where (d.org_id, d.id) in (select o.org_id, o.id from webhook_deliveries o
                               where o.state in ('delivered', 'failed', 'cancelled') and o.created_at < cutoff
                               limit batch);
    get diagnostics outbox = row_count;
    delete from flow_trigger_deliveries t
    where (t.org_id, t.id) in (select i.org_id, i.id from flow_trigger_deliveries i
                               where i.received_at < cutoff
                               limit batch);
    get diagnostics inbox = row_count;
    return jsonb_build_object('deliveries', outbox, 'inbox', inbox);
end;
$$;

comment on function tolstoy_prune_deliveries(integer, integer) is
    'Deletes up to batch finished webhook deliveries and inbound trigger deliveries older than retention_days.';
