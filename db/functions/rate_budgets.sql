-- Rate budgets per credential (issue 26): what a call to a tool takes from the budget of the
-- credential it uses, and what a provider's answer teaches that budget.
--
-- The current source of these functions (db/functions/README.md says how to change one).

create or replace function tolstoy_rate_scope(org uuid, tool uuid, run_user uuid, acts_as_user boolean)
returns text
language plpgsql stable as $$
begin
    return (
        select case when acts_as_user and run_user is not null
                         and exists (select 1 from user_connections c
                                     where c.org_id = org and c.tool_id = tool and c.user_id = run_user)
                    then 'user:' || run_user::text
                    else 'organization' end);
end;
$$;

comment on function tolstoy_rate_scope(uuid, uuid, uuid, boolean) is
    'The credential a call of the tool uses, as a budget''s scope: the run''s user''s connection when the run may '
    'act as that user and the user connected the tool (a per-user OAuth2 tool), else the organization''s credential.';

create or replace function tolstoy_take_budget(org uuid, tool uuid, budget_scope text, call jsonb)
returns jsonb
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    declared jsonb;
    b tool_rate_budgets;
    requests double precision;
    per_seconds double precision;
    since timestamptz := (call ->> 'since')::timestamptz;
    reserved timestamptz := (call ->> 'reserved_until')::timestamptz;
    max_wait double precision := coalesce((call ->> 'max_wait_seconds')::double precision, 21600);
    due timestamptz := clock_now;
    slot timestamptz;
    reserving boolean := false;
    wait double precision;
begin
    select t.rate_limit into declared from tools t where t.org_id = org and t.id = tool;
    select * into b from tool_rate_budgets r
    where r.org_id = org and r.tool_id = tool and r.scope = budget_scope
    for update;
    if not found then
        if declared is null then
            return jsonb_build_object('wait', 0);  -- nothing declared, nothing learned: nothing to keep
        end if;
        insert into tool_rate_budgets (org_id, tool_id, scope) values (org, tool, budget_scope)
        on conflict do nothing;
        select * into b from tool_rate_budgets r
        where r.org_id = org and r.tool_id = tool and r.scope = budget_scope
        for update;
    end if;
    requests := coalesce((declared ->> 'requests')::double precision, b.learned_requests);
    -- A limit stated without its window (GitHub's form) is spread over the window its resets show: a
    -- burst at each reset would spill over into the next window on its way to the provider.
    per_seconds := coalesce((declared ->> 'perSeconds')::double precision, b.learned_per_seconds,
                            case when b.window_seconds > 0 then b.window_seconds end);
    -- A window the provider reported that has ended: the next one, as long as the last (when the
    -- provider said how many requests a window holds).
    if b.window_reset_at is not null and b.window_reset_at <= clock_now then
        if b.learned_requests is not null and b.window_seconds is not null then
            b.window_reset_at := b.window_reset_at + make_interval(secs => b.window_seconds
                * ceil(extract(epoch from clock_now - b.window_reset_at) / b.window_seconds + 1e-9));
            b.window_remaining := b.learned_requests;
        else
            b.window_reset_at := null;
            b.window_remaining := null;
        end if;
    end if;
    if b.paused_until > due then
        due := b.paused_until;
    end if;
    if b.window_remaining <= 0 and b.window_reset_at > due then
        due := b.window_reset_at;
    end if;
    if requests is not null and per_seconds is not null then
        -- GCRA without burst, on the calls actually sent: each goes at least per_seconds / requests
        -- after the one before (tat), so no window of per_seconds ever holds more than requests. A call
        -- that must wait reserves a slot (next_slot moves on), so the calls waiting for one budget
        -- wake one by one rather than all at once, and in turn; fresh calls queue behind them.
        if reserved is not null and reserved <= clock_now then
            -- Its reserved slot came: it goes once the call before it is far enough behind.
            if b.tat > due then
                due := b.tat;
            end if;
            reserving := due > clock_now;
        else
            slot := greatest(coalesce(b.tat, due), coalesce(b.next_slot, due), due);
            if slot > coalesce(since, clock_now) + make_interval(secs => max_wait) then
                slot := null;  -- too far: refused below, nothing reserved
            elsif slot > clock_now then
                b.next_slot := slot + make_interval(secs => per_seconds / requests);
                due := slot;
                reserving := true;
            else
                due := slot;
            end if;
        end if;
        if due <= clock_now then
            b.tat := clock_now + make_interval(secs => per_seconds / requests);
            b.next_slot := greatest(b.next_slot, b.tat);
        end if;
    elsif due > clock_now then
        -- No rate known: the calls a pause holds back wake spread over a tenth of it (at most 1 s).
        due := due + make_interval(secs => random() * least(1, 0.1 * extract(epoch from due - clock_now)));
    end if;
    wait := extract(epoch from coalesce(due, clock_now) - clock_now);
    -- Past the longest wait (since the step began to wait): refused, nothing reserved. A call whose
    -- reserved slot came was within it when it reserved.
    if not coalesce(reserved <= clock_now, false)
       and (slot is null and requests is not null and per_seconds is not null
            or coalesce(since, clock_now) + make_interval(secs => max_wait) < coalesce(due, clock_now)) then
        return jsonb_build_object('wait', wait, 'refused', true);
    end if;
    if wait <= 0 then
        b.window_remaining := b.window_remaining - 1;
        if since is not null then
            b.waited_seconds := b.waited_seconds + greatest(extract(epoch from clock_now - since), 0);
        end if;
    end if;
    update tool_rate_budgets r
    set tat = b.tat, next_slot = b.next_slot, window_remaining = b.window_remaining, window_reset_at = b.window_reset_at,
        waited_seconds = b.waited_seconds, updated_at = clock_now
    where r.org_id = org and r.tool_id = tool and r.scope = budget_scope;
    return jsonb_build_object('wait', greatest(wait, 0), 'until', case when wait > 0 then due end,
                              'reserved', reserving);
end;
$$;

comment on function tolstoy_take_budget(uuid, uuid, text, jsonb) is
    'One call''s take from the rate budget of a tool''s credential (budget_scope): {"wait": 0} when it may go now '
    '(taken), else the seconds to wait and until when (a slot reserved when a rate is known), or "refused" when '
    'the call would have waited longer than call.max_wait_seconds since call.since. Declared limits (tools.rate_limit) '
    'win over learned ones. Writes nothing for a tool with neither.';

create or replace function tolstoy_learn_budget(org uuid, tool uuid, budget_scope text, lesson jsonb)
returns void
language plpgsql as $$
declare
    clock_now timestamptz := tolstoy_now();  -- the database's clock (clock.sql)
    b tool_rate_budgets;
    pause double precision := (lesson ->> 'pause_seconds')::double precision;
    requests integer := (lesson ->> 'requests')::integer;
    per_seconds double precision := (lesson ->> 'per_seconds')::double precision;
    remaining integer := (lesson ->> 'remaining')::integer;
    reset_seconds double precision := (lesson ->> 'reset_seconds')::double precision;
    reset_at timestamptz;
begin
    if not exists (select 1 from tools t where t.org_id = org and t.id = tool) then
        return;  -- deleted since the run's plan was made: nothing to teach
    end if;
    insert into tool_rate_budgets (org_id, tool_id, scope) values (org, tool, budget_scope)
    on conflict do nothing;
    select * into b from tool_rate_budgets r
    where r.org_id = org and r.tool_id = tool and r.scope = budget_scope
    for update;
    if (lesson ->> 'throttled')::boolean then
        b.throttled := b.throttled + 1;
    end if;
    if pause > 0 then
        b.paused_until := greatest(b.paused_until, clock_now + make_interval(secs => pause));
    end if;
    if requests > 0 then
        b.learned_requests := requests;
        b.learned_per_seconds := coalesce(per_seconds, b.learned_per_seconds);
        b.learned_at := clock_now;
    end if;
    if remaining >= 0 and reset_seconds >= 0 then
        reset_at := clock_now + make_interval(secs => reset_seconds);
        b.window_seconds := greatest(coalesce(per_seconds, reset_seconds), b.window_seconds, reset_seconds);
        if b.window_reset_at is null or reset_at > b.window_reset_at + interval '1 second' then
            -- A later window than the one kept: what it says holds.
            b.window_reset_at := reset_at;
            b.window_remaining := remaining;
        elsif reset_at >= b.window_reset_at - interval '1 second' then
            -- The same window: answers cross on the way, so the least left is the truth.
            b.window_remaining := least(b.window_remaining, remaining);
        end if;  -- an earlier window's late answer says nothing now
    end if;
    update tool_rate_budgets r
    set throttled = b.throttled, paused_until = b.paused_until, learned_requests = b.learned_requests,
        learned_per_seconds = b.learned_per_seconds, learned_at = b.learned_at, window_seconds = b.window_seconds,
        window_reset_at = b.window_reset_at, window_remaining = b.window_remaining, updated_at = clock_now
    where r.org_id = org and r.tool_id = tool and r.scope = budget_scope;
end;
$$;

comment on function tolstoy_learn_budget(uuid, uuid, text, jsonb) is
    'What one answer of a provider taught the budget of a tool''s credential (lesson, parsed and clamped by the '
    'engine: tolstoy/engine/ratelimits.py): a 429 counted, a pause (Retry-After), the limit (requests per '
    'per_seconds), what is left of the current window and when it resets.';

create or replace function tolstoy_checkpoint_call(worker text, org uuid, run uuid, token integer, writes jsonb,
                                                   call jsonb)
returns jsonb
language plpgsql set plan_cache_mode = force_generic_plan as $$
declare
    lesson jsonb;
    budget_scope text;
    taken jsonb;
    step text := call ->> 'step_id';
    shown jsonb;
    wait_ms double precision;
begin
    perform set_config('app.org_id', org::text, true);
    -- What the answers of earlier calls taught (each names its tool and the run's user), then the take,
    -- budget rows locked in the order of their tools (two runs' statements never wait on each other in
    -- a circle), a tool's lessons before its take (a 429's pause holds the call it answered).
    for lesson in
        select u.item
        from (select l.value as item, l.n
              from jsonb_array_elements(coalesce(call -> 'lessons', '[]')) with ordinality as l(value, n)
              union all
              select jsonb_build_object('take', true, 'tool_id', call -> 'tool_id'), null
              where call ->> 'tool_id' is not null) as u
        order by u.item ->> 'tool_id', u.n nulls last
    loop
        if (lesson ->> 'take')::boolean then
            budget_scope := tolstoy_rate_scope(org, (call ->> 'tool_id')::uuid, (call ->> 'user_id')::uuid,
                                               coalesce((call ->> 'acts_as_user')::boolean, false));
            taken := tolstoy_take_budget(org, (call ->> 'tool_id')::uuid, budget_scope, call);
        else
            perform tolstoy_learn_budget(org, (lesson ->> 'tool_id')::uuid,
                                         tolstoy_rate_scope(org, (lesson ->> 'tool_id')::uuid,
                                                            (lesson ->> 'user_id')::uuid,
                                                            coalesce((lesson ->> 'acts_as_user')::boolean, false)),
                                         lesson);
        end if;
    end loop;
    if taken is null then
        return tolstoy_checkpoint(worker, org, run, token, writes);
    end if;
    if (taken ->> 'refused')::boolean then
        -- Waited too long: the call is recorded as not started (the engine fails the step).
        writes := jsonb_set(writes, '{steps}', coalesce((
            select jsonb_agg(case when s ->> 'step_id' = step
                                  then jsonb_build_object('step_id', step, 'status', 'running',
                                                          'attempt', s -> 'attempt')
                                  else s end)
            from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) as s), '[]'));
        writes := jsonb_set(writes, '{events}', coalesce((
            select jsonb_agg(e) from jsonb_array_elements(coalesce(writes -> 'events', '[]')) as e
            where not (e ->> 'step_key' = step and e ->> 'status' = 'started')), '[]'));
        return tolstoy_checkpoint(worker, org, run, token, writes) || jsonb_build_object('budget', taken);
    end if;
    if (taken ->> 'wait')::double precision <= 0 then
        return tolstoy_checkpoint(worker, org, run, token, writes) || jsonb_build_object('budget', taken);
    end if;
    -- No room: the step waits for its budget instead of calling, holding no thread (and the run no
    -- lease, unless other items of its foreach step still run). Its inputs say what it waits for
    -- (what the run view shows), and since when (what bounds the wait).
    wait_ms := ceil((taken ->> 'wait')::double precision * 1000);
    shown := jsonb_build_object('rateLimit', jsonb_build_object(
        'toolId', call ->> 'tool_id', 'scope', case when budget_scope = 'organization' then 'organization' else 'user' end,
        'until', taken -> 'until', 'since', coalesce(nullif(call -> 'since', 'null'), to_jsonb(tolstoy_now())),
        'reserved', (taken ->> 'reserved')::boolean));
    writes := jsonb_set(writes, '{steps}', coalesce((
        select jsonb_agg(case when s ->> 'step_id' = step
                              then (s - 'call_started') || jsonb_build_object(
                                       'status', 'waiting', 'wake_in_ms', wait_ms,
                                       'inputs', case when jsonb_typeof(s -> 'inputs') = 'object'
                                                      then s -> 'inputs' else '{}' end || shown)
                              else s end)
        from jsonb_array_elements(coalesce(writes -> 'steps', '[]')) as s), '[]'));
    writes := jsonb_set(writes, '{events}', coalesce((
        select jsonb_agg(e) from jsonb_array_elements(coalesce(writes -> 'events', '[]')) as e
        where not (e ->> 'step_key' = step and e ->> 'status' = 'started')), '[]')
        || case when call ->> 'since' is null and not coalesce((call ->> 'item')::boolean, false)
                then jsonb_build_array(jsonb_build_object('step_key', step, 'status', 'pending', 'inputs', shown))
                else '[]' end);
    if not coalesce((call ->> 'item')::boolean, false) then
        writes := jsonb_set(writes, '{run}', jsonb_build_object('action', 'pause', 'after_ms', wait_ms));
    end if;
    return tolstoy_checkpoint(worker, org, run, token, writes) || jsonb_build_object('budget', taken || shown);
end;
$$;

comment on function tolstoy_checkpoint_call(text, uuid, uuid, integer, jsonb, jsonb) is
    'tolstoy_checkpoint for the step whose call starts (call.step_id), in the same statement: first what earlier '
    'answers taught the credentials'' budgets (call.lessons), then the call''s take from its credential''s budget '
    '(call.tool_id). With room, the checkpoint as written; without, the step is checkpointed waiting for its budget '
    '(inputs.rateLimit, wake_at) and the run paused until then (a foreach item: only the item sleeps); past the '
    'longest wait, the call is recorded as not started and the answer''s budget says refused.';
