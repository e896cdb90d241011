-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A state change is one SQL function (issue 24): sending a signal to a run was
-- composed by the API from four statements (sql/runs.sql get_for_update, then
-- sql/signals.sql state and send, then an execution log write). It is now one
-- function that the engine's lifecycle module (tolstoy/engine/lifecycle.py,
-- send_signal) calls, as it calls tolstoy_cancel_run and tolstoy_resolve_step.
-- Same checks in the same order, same locking (the run's row first, as the
-- worker's tolstoy_take_signal), same rows written. It runs as its caller (the
-- API's role, under row-level security for the organization it acts for).

-- How many of a run's wait steps for signal_name have not finished (a step of onFailure counts too):
-- how many signals of that name the run can still take. tolstoy_send_signal decides with it, and
-- the API reads it before it makes or shows an approval link (sql/signals.sql state).
create function tolstoy_unfinished_waits(org uuid, run uuid, run_created_at timestamptz, run_plan jsonb,
                                                    signal_name text)
returns bigint
language sql stable as $$
select count(*)
from (select st ->> 'id' as step_id, st -> 'config' ->> 'signal' as signal
      from jsonb_array_elements(coalesce(run_plan -> 'steps', '[]')) as st
      where st ->> 'type' = 'wait'
      union all
      select 'onFailure.' || (st ->> 'id'), st -> 'config' ->> 'signal'
      from jsonb_array_elements(coalesce(run_plan -> 'onFailure', '[]')) as st
      where st ->> 'type' = 'wait') as waits
where waits.signal = signal_name
  and not exists (select 1 from flow_run_steps s
                  where s.org_id = org and s.run_id = run and s.run_created_at = tolstoy_unfinished_waits.run_created_at
                    and s.step_id = waits.step_id and s.status in ('completed', 'failed', 'skipped'));
$$;

comment on function tolstoy_unfinished_waits(uuid, uuid, timestamptz, jsonb, text) is
    'How many wait steps for signal_name of the run (run_plan: its plan) have not finished: how many signals of '
    'that name it can still take.';

-- A signal sent to a run (POST …/signals/{signal}, or an approval link): the run's row is locked
-- first, as tolstoy_take_signal locks it, so a signal and a run parking at its wait step never
-- cross. It is stored only when the run can still take it (an unfinished wait step for it, and
-- fewer pending signals of the name than such steps), wakes the run when a wait step of it is
-- parked for this signal (run_after = now; the queue's trigger sends NOTIFY; a run parked
-- elsewhere, a delay or a retry's back-off, is left asleep: its wait step takes the signal when it
-- gets there), and is logged as the actor's.
create function tolstoy_send_signal(org uuid, flow uuid, target uuid, signal_name text, signal_payload jsonb,
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
                    and s.status = 'waiting' and s.inputs ->> 'signal' = signal_name and s.inputs ? 'onTimeout');
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

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop function tolstoy_send_signal(uuid, uuid, uuid, text, jsonb, uuid, text, text, uuid, text);
drop function tolstoy_unfinished_waits(uuid, uuid, timestamptz, jsonb, text);
