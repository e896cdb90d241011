-- migrate:up

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A signal keeps its sender's trace context (issue 27, docs/observability.md): the traceparent sent with
-- POST …/signals/{signal} is stored with the signal, and the wait step that takes it links its span to the
-- sender's, so a run woken by a signal shows who woke it. Through the send function
-- (tolstoy_send_signal_v2; tolstoy_send_signal is it without a trace, the previous release's signature): no
-- statement more.
-- A nullable column without a default: a change of the catalog only.
alter table flow_run_signals add column trace_parent text;

comment on column flow_run_signals.trace_parent is
    'The W3C traceparent of whoever sent the signal, or null: the span of the wait step that takes it links to '
    'it (tolstoy/tracing.py). Written only by tolstoy_send_signal_v2, which keeps only a well-formed value.';

create or replace function tolstoy_send_signal_v2(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb,
                                                  actor uuid, signed_by text, key text, link uuid, sent_through text,
                                                  caller_trace text)
returns jsonb
language plpgsql as $$
declare
    found_run flow_runs;
    earlier_id uuid;
    earlier_signal text;
    earlier_at timestamptz;
    unfinished_waits bigint;
    pending_signals bigint;
    sent_id uuid;
    sent_at timestamptz;
    woke boolean;
begin
    select * into found_run
    from flow_runs r
    where r.org_id = org and r.flow_id = flow and r.id = target
      and r.created_at between tolstoy_run_from(target) and tolstoy_run_until(target)
    for update;
    if found_run.id is null then
        return null;
    end if;
    -- A repeated Idempotency-Key answers with the signal it sent, whatever the run did since.
    if key is not null then
        select g.id, g.signal, g.created_at into earlier_id, earlier_signal, earlier_at
        from flow_run_signals g
        where g.org_id = org and g.run_id = target and g.idempotency_key = key;
        if earlier_id is not null then
            if earlier_signal <> signal_name then
                return jsonb_build_object('refused', 'key');
            end if;
            return jsonb_build_object('created', false,
                                      'signal', jsonb_build_object('id', earlier_id, 'signal', earlier_signal,
                                                                   'created_at', earlier_at, 'run_id', target));
        end if;
    end if;
    -- Each approval link delivers at most one signal.
    if link is not null and exists (select 1 from flow_run_signals g where g.org_id = org and g.link_id = link) then
        return jsonb_build_object('refused', 'link');
    end if;
    if found_run.status in ('completed', 'failed', 'cancelled') then
        return jsonb_build_object('refused', 'finished', 'status', found_run.status);
    end if;
    unfinished_waits := tolstoy_unfinished_waits(org, target, found_run.created_at, found_run.plan, signal_name);
    select count(*) into pending_signals
    from flow_run_signals g
    where g.org_id = org and g.run_id = target and g.signal = signal_name and g.step_id is null;
    if unfinished_waits <= pending_signals then
        return jsonb_build_object('refused', 'waiting', 'pending', pending_signals);
    end if;
    -- The sender's W3C trace context, when well formed (else none, as the W3C says of a bad one): the wait step
    -- that takes the signal links its span to it (tolstoy/tracing.py).
    insert into flow_run_signals (org_id, run_id, signal, payload, user_id, approver, idempotency_key, link_id,
                                  trace_parent)
    values (org, target, signal_name, signal_payload, actor, signed_by, key, link,
            tolstoy_trace_parent(caller_trace))
    returning id, created_at into sent_id, sent_at;
    update flow_runs r
    set run_after = tolstoy_now()
    where r.org_id = org and r.id = target and r.created_at = found_run.created_at and r.status = 'queued'
      and exists (select 1 from flow_run_steps s
                  where s.org_id = org and s.run_id = target and s.run_created_at = found_run.created_at
                    and s.status = 'waiting' and s.inputs ? 'onTimeout'
                    and (s.inputs ->> 'signal' = signal_name or coalesce(s.inputs -> 'signals', '[]') ? signal_name));
    woke := found;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, source)
    values (org, flow, actor, target::text, '$flow', 'pending',
            jsonb_build_object('signal', signal_name, 'signalId', sent_id, 'source', sent_through,
                               'approver', signed_by, 'wokeRun', woke),
            'engine');
    return jsonb_build_object('created', true, 'woke', woke,
                              'signal', jsonb_build_object('id', sent_id, 'signal', signal_name,
                                                           'created_at', sent_at, 'run_id', target));
end
$$;

comment on function tolstoy_send_signal_v2(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text, text) is
    'Sends signal_name with signal_payload to a run of a flow, holding the run''s row: stores it, wakes the run when '
    'a wait step of it is parked for it, and logs it as actor''s (sent_through: api or link). Null when no such run; '
    '{refused: key|link|finished|waiting} writes nothing (the Idempotency-Key sent another signal; the approval '
    'link was used; the run finished, with its status; no unfinished wait step is left for it, with the pending '
    'count); else {created, woke, signal: {id, signal, created_at, run_id}} (created false: the signal key sent before). '
    'caller_trace: the sender''s W3C traceparent, kept in flow_run_signals.trace_parent when well formed.';

create or replace function tolstoy_send_signal(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb,
                                               actor uuid, signed_by text, key text, link uuid, sent_through text)
returns jsonb
language sql as $$
    select tolstoy_send_signal_v2(org, flow, target, signal_name, signal_payload, actor, signed_by, key, link,
                                  sent_through, null)
$$;

comment on function tolstoy_send_signal(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text) is
    'tolstoy_send_signal_v2 without the sender''s trace context (the previous release''s API).';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function tolstoy_send_signal(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb,
                                               actor uuid, signed_by text, key text, link uuid, sent_through text)
returns jsonb
language plpgsql as $$
declare
    found_run flow_runs;
    earlier_id uuid;
    earlier_signal text;
    earlier_at timestamptz;
    unfinished_waits bigint;
    pending_signals bigint;
    sent_id uuid;
    sent_at timestamptz;
    woke boolean;
begin
    select * into found_run
    from flow_runs r
    where r.org_id = org and r.flow_id = flow and r.id = target
      and r.created_at between tolstoy_run_from(target) and tolstoy_run_until(target)
    for update;
    if found_run.id is null then
        return null;
    end if;
    -- A repeated Idempotency-Key answers with the signal it sent, whatever the run did since.
    if key is not null then
        select g.id, g.signal, g.created_at into earlier_id, earlier_signal, earlier_at
        from flow_run_signals g
        where g.org_id = org and g.run_id = target and g.idempotency_key = key;
        if earlier_id is not null then
            if earlier_signal <> signal_name then
                return jsonb_build_object('refused', 'key');
            end if;
            return jsonb_build_object('created', false,
                                      'signal', jsonb_build_object('id', earlier_id, 'signal', earlier_signal,
                                                                   'created_at', earlier_at, 'run_id', target));
        end if;
    end if;
    -- Each approval link delivers at most one signal.
    if link is not null and exists (select 1 from flow_run_signals g where g.org_id = org and g.link_id = link) then
        return jsonb_build_object('refused', 'link');
    end if;
    if found_run.status in ('completed', 'failed', 'cancelled') then
        return jsonb_build_object('refused', 'finished', 'status', found_run.status);
    end if;
    unfinished_waits := tolstoy_unfinished_waits(org, target, found_run.created_at, found_run.plan, signal_name);
    select count(*) into pending_signals
    from flow_run_signals g
    where g.org_id = org and g.run_id = target and g.signal = signal_name and g.step_id is null;
    if unfinished_waits <= pending_signals then
        return jsonb_build_object('refused', 'waiting', 'pending', pending_signals);
    end if;
    insert into flow_run_signals (org_id, run_id, signal, payload, user_id, approver, idempotency_key, link_id)
    values (org, target, signal_name, signal_payload, actor, signed_by, key, link)
    returning id, created_at into sent_id, sent_at;
    update flow_runs r
    set run_after = tolstoy_now()
    where r.org_id = org and r.id = target and r.created_at = found_run.created_at and r.status = 'queued'
      and exists (select 1 from flow_run_steps s
                  where s.org_id = org and s.run_id = target and s.run_created_at = found_run.created_at
                    and s.status = 'waiting' and s.inputs ? 'onTimeout'
                    and (s.inputs ->> 'signal' = signal_name or coalesce(s.inputs -> 'signals', '[]') ? signal_name));
    woke := found;
    insert into execution_logs (org_id, flow_id, user_id, execution_id, step_key, status, inputs, source)
    values (org, flow, actor, target::text, '$flow', 'pending',
            jsonb_build_object('signal', signal_name, 'signalId', sent_id, 'source', sent_through,
                               'approver', signed_by, 'wokeRun', woke),
            'engine');
    return jsonb_build_object('created', true, 'woke', woke,
                              'signal', jsonb_build_object('id', sent_id, 'signal', signal_name,
                                                           'created_at', sent_at, 'run_id', target));
end
$$;

comment on function tolstoy_send_signal(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text) is
    'Sends signal_name with signal_payload to a run of a flow, holding the run''s row: stores it, wakes the run when '
    'a wait step of it is parked for it, and logs it as actor''s (sent_through: api or link). Null when no such run; '
    '{refused: key|link|finished|waiting} writes nothing (the Idempotency-Key sent another signal; the approval '
    'link was used; the run finished, with its status; no unfinished wait step is left for it, with the pending '
    'count); else {created, woke, signal: {id, signal, created_at, run_id}} (created false: the signal key sent before).';

drop function tolstoy_send_signal_v2(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text, text);

alter table flow_run_signals drop column trace_parent;
