-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '120s';

-- Fair, ordered webhook deliveries.
--
-- 1. Order per webhook is commit order. A delivery's seq was taken when its
--    row was inserted, so two transactions that committed the other way round
--    (the later-inserted one first) reached the receiver in insert order, not
--    in the order their changes happened. Now a delivery gets its place in its
--    webhook's line when its transaction commits: a deferred constraint
--    trigger (tolstoy_place_deliveries) locks the webhook's line row
--    (webhook_lines) and only then takes seq from the sequence, so whoever
--    commits next on that webhook waits for the lock and takes a larger seq.
--    A delivery carries placed = false until then; rows that existed before
--    this migration are placed (their seq was their order).
--
-- 2. Claims are head-of-line per webhook and round-robin across webhooks and
--    organizations. The claim used to read the first max_deliveries due rows
--    of the whole outbox in time order and put off each one found behind an
--    unfinished earlier delivery of its webhook until that one's lease ran out
--    (25 s by default): one organization's burst of 2,000 events to a healthy
--    receiver held another organization's single event for two minutes. Now
--    each webhook has one line row saying when a claim should look at it next
--    (due_at: its first unfinished delivery's next attempt, or the end of the
--    lease it is being sent under; null: nothing unfinished) and when one of
--    its deliveries was last handed out (served_at). A claim reads due lines
--    only: first one line of each organization, organizations in the order
--    they were last served (longest ago first), each organization's lines in
--    the same order; then second lines; and hands out each line's first
--    unfinished delivery. Nothing is put off, so nothing waits behind another
--    webhook's backlog.
--
-- Locks: the claim and tolstoy_record_delivery lock a line before its
-- deliveries; the commit trigger locks lines in (org_id, webhook_id) order
-- and takes no delivery lock held by anyone else. Neither waits on the other
-- in a cycle.

create table webhook_lines (
    org_id uuid not null,
    webhook_id uuid not null,
    -- When a claim should look at the line next; null when nothing of it is unfinished.
    due_at timestamptz,
    -- When a claim last handed out one of its deliveries (null: never).
    served_at timestamptz,
    created_at timestamptz not null default now(),
    constraint webhook_lines_pkey primary key (org_id, webhook_id),
    -- A webhook's line belongs to it and goes with it.
    constraint webhook_lines_webhook_id_fkey foreign key (org_id, webhook_id)
        references webhooks (org_id, id) on delete cascade
);

comment on table webhook_lines is
    'One row per webhook with deliveries: when the claim should look at its line next and when it last '
    'served it (round robin). Its row lock orders the webhook''s deliveries by commit.';
comment on column webhook_lines.due_at is
    'When the line''s first unfinished delivery is due (pending) or its lease ends (sending); null: none '
    'is unfinished. Never later than that: a claim that finds it early sets it right.';
comment on column webhook_lines.served_at is
    'When a claim last handed out a delivery of this line (clock time; null: never): longest ago goes first.';

-- The claim's way in (due lines, whatever the history), and an organization's last service.
create index webhook_lines_due_at_idx on webhook_lines (due_at) where due_at is not null;
create index webhook_lines_org_id_served_at_idx on webhook_lines (org_id, served_at);

alter table webhook_lines enable row level security;
alter table webhook_lines force row level security;
create policy tenant_isolation on webhook_lines
    using (org_id = tolstoy_current_org()) with check (org_id = tolstoy_current_org());
create policy engine_access on webhook_lines to tolstoy_engine using (true) with check (true);
grant select, insert, update, delete on webhook_lines to tolstoy_engine;

-- Placed rows keep true (a constant default is kept in the catalog: no rewrite); new rows start
-- unplaced and are placed when their transaction commits.
alter table webhook_deliveries add column placed boolean not null default true;
alter table webhook_deliveries alter column placed set default false;

comment on column webhook_deliveries.placed is
    'False until the inserting transaction commits and tolstoy_place_deliveries gives it its seq in its '
    'webhook''s line.';
comment on column webhook_deliveries.seq is
    'Place in its webhook''s line, taken when the inserting transaction commits, under the line''s lock: '
    'a webhook''s deliveries go out in commit order.';

-- The commit trigger finds the transaction's unplaced rows through this (empty between commits).
-- Not concurrently (a migration is one transaction); the build reads the outbox once and writes
-- nothing, as every existing row is placed.
-- squawk-ignore require-concurrent-index-creation
create index webhook_deliveries_unplaced_idx on webhook_deliveries (seq) where not placed;
-- The claim no longer reads the outbox by due time or by lease: webhook_lines says which lines are due.
-- squawk-ignore require-concurrent-index-deletion
drop index webhook_deliveries_due_idx;
-- squawk-ignore require-concurrent-index-deletion
drop index webhook_deliveries_lease_idx;

-- Lines for the deliveries already queued: due when their first unfinished one is.
insert into webhook_lines (org_id, webhook_id, due_at)
select distinct on (d.org_id, d.webhook_id) d.org_id, d.webhook_id,
       case when d.state = 'sending' then d.lease_expires_at else d.next_attempt_at end
from webhook_deliveries d
where d.state in ('pending', 'sending')
order by d.org_id, d.webhook_id, d.seq;

-- ---- placing deliveries at commit ---------------------------------------------------------

-- Runs at commit, once per delivery inserted; the first firing places every delivery the
-- transaction wrote (another transaction's unplaced rows are not visible: it has not committed),
-- the later ones find their row placed. Each line is locked (its row upserted) in one order before any
-- seq is taken, and the lock is held until the commit ends, so seq follows commit order per webhook.
-- A line that had nothing unfinished becomes due now. Runs as tolstoy_engine: events are written by
-- the API, the workers and the engine's own functions, for any organization.
create function tolstoy_place_deliveries() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
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
        values (line.org_id, line.webhook_id, now())
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

alter function tolstoy_place_deliveries() owner to tolstoy_engine;
revoke execute on function tolstoy_place_deliveries() from public;

create constraint trigger webhook_deliveries_place
    after insert on webhook_deliveries
    deferrable initially deferred
    for each row execute function tolstoy_place_deliveries();

-- ---- claiming --------------------------------------------------------------------------

-- Claim up to max_deliveries deliveries of any organization, at most one per webhook: due lines
-- taken in turns (each organization's longest-unserved line first, organizations longest-unserved
-- first; then their second lines, …), each locked with SKIP LOCKED and its first unfinished
-- delivery handed out under a new lease token: a pending one that is due, or one whose worker
-- vanished (its lease ran out; the lost attempt is logged). A line found early is set to when it
-- is due; a disabled webhook's pending deliveries are cancelled. Returns {deliveries: [delivery with
-- its webhook's url and encrypted secret and headers], next_due, now}.
create or replace function tolstoy_claim_deliveries(worker text, max_deliveries integer,
                                                    lease_seconds double precision)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
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
              where l.due_at <= now()) as x
        cross join lateral (select max(o.served_at) as served_at
                            from webhook_lines o where o.org_id = x.org_id) as org_turn
        order by x.turn, org_turn.served_at nulls first, x.served_at nulls first, x.org_id, x.webhook_id
        -- Spare candidates: another worker claiming at the same moment holds some of the first.
        limit max_deliveries * 2 + 8
    loop
        exit when jsonb_array_length(claimed) >= max_deliveries;
        select * into line from webhook_lines l
        where l.org_id = candidate.org_id and l.webhook_id = candidate.webhook_id and l.due_at <= now()
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
                              then now() + interval '1 second' end
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'sending' and head.lease_expires_at >= now() then
            update webhook_lines l set due_at = head.lease_expires_at
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        if head.state = 'pending' and head.next_attempt_at > now() then
            update webhook_lines l set due_at = head.next_attempt_at
            where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
            continue;
        end if;
        select * into hook from webhooks w where w.org_id = line.org_id and w.id = line.webhook_id;
        if head.state = 'pending' and not hook.enabled then
            -- Disabled while these were queued: they are not sent.
            update webhook_deliveries d
            set state = 'cancelled', next_attempt_at = null, finished_at = now(),
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
                lease_expires_at = now() + lease, last_attempt_at = now(),
                attempt_log = d.attempt_log || jsonb_build_object(
                    'attempt', d.attempts, 'at', tolstoy_iso(d.last_attempt_at), 'statusCode', null,
                    'durationMs', null, 'error', 'The worker sending it vanished; sent again.', 'location', null)
            where d.org_id = head.org_id and d.id = head.id
            returning * into taken;
        else
            update webhook_deliveries d
            set state = 'sending', attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
                lease_expires_at = now() + lease, first_attempt_at = coalesce(d.first_attempt_at, now()),
                last_attempt_at = now()
            where d.org_id = head.org_id and d.id = head.id
            returning * into taken;
        end if;
        update webhook_lines l
        set due_at = taken.lease_expires_at, served_at = clock_timestamp()
        where l.org_id = line.org_id and l.webhook_id = line.webhook_id;
        claimed := claimed || jsonb_build_object(
            'org_id', taken.org_id, 'id', taken.id, 'webhook_id', taken.webhook_id, 'event_id', taken.event_id,
            'event_type', taken.event_type, 'data', taken.data, 'created_at', tolstoy_iso(taken.event_created_at),
            'token', taken.lease_token, 'url', hook.url, 'secret', encode(hook.secret, 'base64'),
            'headers', encode(hook.headers, 'base64'));
    end loop;
    return jsonb_build_object('deliveries', claimed, 'next_due', tolstoy_next_delivery(), 'now', now());
end;
$$;

comment on function tolstoy_claim_deliveries(text, integer, double precision) is
    'Claims up to max_deliveries webhook deliveries of any organization, the first unfinished one of each due '
    'line, lines round-robin across organizations and webhooks; returns {deliveries, next_due, now}.';

-- When the next delivery falls due: the earliest line.
create or replace function tolstoy_next_delivery() returns timestamptz
language sql stable security definer set search_path = public, pg_temp as $$
    select min(l.due_at) from webhook_lines l where l.due_at is not null
$$;

comment on function tolstoy_next_delivery() is
    'The earliest time a webhook delivery of any organization falls due (null: none is waiting).';

-- Record one attempt of a claimed delivery, acting for its organization, fenced by the lease token
-- (a delivery claimed again by another worker ignores the late answer). outcome: delivered; retry
-- (after retry_in_ms, unless that is past give_up_seconds since the first attempt: then failed);
-- failed (final). A webhook failing for give_up_seconds is disabled with the reason; a success clears
-- its failing streak. The line is locked first (as the claim does) and then says when to look at it
-- again: at this delivery's retry, or when the next in line is due.
--
-- result = {outcome, status_code, duration_ms, error, location, retry_in_ms, give_up_seconds}
create or replace function tolstoy_record_delivery(worker text, org uuid, delivery uuid, token integer,
                                                   result jsonb)
returns jsonb
language plpgsql as $$
declare
    current webhook_deliveries;
    outcome text := result ->> 'outcome';
    give_up interval := make_interval(secs => coalesce((result ->> 'give_up_seconds')::double precision, 86400));
    retry_at timestamptz := now() + make_interval(secs => coalesce((result ->> 'retry_in_ms')::double precision, 0)
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
    if outcome <> 'delivered' and hook.enabled and now() - hook.failing_since >= give_up then
        -- Failing for the whole period: the webhook is disabled, this delivery given up with it.
        disabled := format('Disabled at %s: every delivery failed since %s (last: %s).',
                           tolstoy_iso(now()), tolstoy_iso(hook.failing_since),
                           coalesce('HTTP ' || (result ->> 'status_code'), left(result ->> 'error', 300),
                                    'no answer'));
        outcome := 'failed';
    elsif outcome = 'retry' and (retry_at - current.first_attempt_at > give_up or not hook.enabled) then
        outcome := 'failed';
    end if;
    update webhook_deliveries d
    set state = case outcome when 'delivered' then 'delivered' when 'retry' then 'pending' else 'failed' end,
        next_attempt_at = case when outcome = 'retry' then retry_at end,
        finished_at = case when outcome <> 'retry' then now() end,
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
        update webhooks set failing_since = now() where org_id = org and id = hook.id;
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

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '120s';

-- The functions of 20261201000010 (their bodies as they were there).
create or replace function tolstoy_claim_deliveries(worker text, max_deliveries integer,
                                                    lease_seconds double precision)
returns jsonb
language plpgsql security definer set search_path = public, pg_temp as $$
declare
    claimed jsonb := '[]';
    candidate record;
    taken webhook_deliveries;
    hook webhooks;
    lease interval := make_interval(secs => lease_seconds);
    ahead timestamptz;
begin
    if worker is null or worker = '' or max_deliveries < 1 or max_deliveries > 1000 or lease_seconds <= 0
            or lease_seconds > 3600 then
        raise exception 'tolstoy_claim_deliveries: invalid arguments' using errcode = 'invalid_parameter_value';
    end if;
    for candidate in
        select d.org_id, d.id
        from webhook_deliveries d
        where d.state = 'sending' and d.lease_expires_at < now()
        order by d.lease_expires_at
        limit max_deliveries
        for update skip locked
    loop
        update webhook_deliveries d
        set attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
            lease_expires_at = now() + lease, last_attempt_at = now(),
            attempt_log = d.attempt_log || jsonb_build_object(
                'attempt', d.attempts, 'at', tolstoy_iso(d.last_attempt_at), 'statusCode', null,
                'durationMs', null, 'error', 'The worker sending it vanished; sent again.')
        where d.org_id = candidate.org_id and d.id = candidate.id
        returning * into taken;
        select * into hook from webhooks w where w.org_id = taken.org_id and w.id = taken.webhook_id;
        claimed := claimed || jsonb_build_object(
            'org_id', taken.org_id, 'id', taken.id, 'webhook_id', taken.webhook_id, 'event_id', taken.event_id,
            'event_type', taken.event_type, 'data', taken.data, 'created_at', tolstoy_iso(taken.event_created_at),
            'token', taken.lease_token, 'url', hook.url, 'secret', encode(hook.secret, 'base64'),
            'headers', encode(hook.headers, 'base64'));
    end loop;
    for candidate in
        select d.org_id, d.id, d.webhook_id, d.seq
        from webhook_deliveries d
        where d.state = 'pending' and d.next_attempt_at <= now()
        order by d.next_attempt_at, d.seq
        limit max_deliveries - jsonb_array_length(claimed)
        for update skip locked
    loop
        select case when e.state = 'pending' then e.next_attempt_at else e.lease_expires_at end into ahead
        from webhook_deliveries e
        where e.org_id = candidate.org_id and e.webhook_id = candidate.webhook_id
          and e.state in ('pending', 'sending') and e.seq < candidate.seq
        order by e.seq
        limit 1;
        if found then
            update webhook_deliveries
            set next_attempt_at = greatest(ahead, now() + interval '1 second')
            where org_id = candidate.org_id and id = candidate.id;
            continue;
        end if;
        select * into hook from webhooks w where w.org_id = candidate.org_id and w.id = candidate.webhook_id;
        if not hook.enabled then
            update webhook_deliveries
            set state = 'cancelled', next_attempt_at = null, finished_at = now(),
                last_error = coalesce(hook.disabled_reason, 'The webhook was disabled.')
            where org_id = candidate.org_id and id = candidate.id;
            continue;
        end if;
        update webhook_deliveries d
        set state = 'sending', attempts = d.attempts + 1, lease_token = d.attempts + 1, lease_owner = worker,
            lease_expires_at = now() + lease, first_attempt_at = coalesce(d.first_attempt_at, now()),
            last_attempt_at = now()
        where d.org_id = candidate.org_id and d.id = candidate.id
        returning * into taken;
        claimed := claimed || jsonb_build_object(
            'org_id', taken.org_id, 'id', taken.id, 'webhook_id', taken.webhook_id, 'event_id', taken.event_id,
            'event_type', taken.event_type, 'data', taken.data, 'created_at', tolstoy_iso(taken.event_created_at),
            'token', taken.lease_token, 'url', hook.url, 'secret', encode(hook.secret, 'base64'),
            'headers', encode(hook.headers, 'base64'));
    end loop;
    return jsonb_build_object('deliveries', claimed, 'next_due', tolstoy_next_delivery(), 'now', now());
end;
$$;

comment on function tolstoy_claim_deliveries(text, integer, double precision) is
    'Claims up to max_deliveries webhook deliveries of any organization (expired leases first, then due ones, '
    'one per webhook line), returns {deliveries, next_due, now}.';

create or replace function tolstoy_next_delivery() returns timestamptz
language sql stable security definer set search_path = public, pg_temp as $$
    select least((select min(d.next_attempt_at) from webhook_deliveries d where d.state = 'pending'),
                 (select min(d.lease_expires_at) from webhook_deliveries d where d.state = 'sending'))
$$;

comment on function tolstoy_next_delivery() is
    'The earliest time a webhook delivery of any organization falls due (null: none is waiting).';

create or replace function tolstoy_record_delivery(worker text, org uuid, delivery uuid, token integer,
                                                   result jsonb)
returns jsonb
language plpgsql as $$
declare
    current webhook_deliveries;
    outcome text := result ->> 'outcome';
    give_up interval := make_interval(secs => coalesce((result ->> 'give_up_seconds')::double precision, 86400));
    retry_at timestamptz := now() + make_interval(secs => coalesce((result ->> 'retry_in_ms')::double precision, 0)
                                                          / 1000);
    hook webhooks;
    disabled text;
begin
    if outcome is null or outcome not in ('delivered', 'retry', 'failed') then
        raise exception 'tolstoy_record_delivery: invalid outcome' using errcode = 'invalid_parameter_value';
    end if;
    perform set_config('app.org_id', org::text, true);
    select * into current from webhook_deliveries d
    where d.org_id = org and d.id = delivery and d.lease_owner = worker and d.lease_token = token
      and d.state = 'sending'
    for update;
    if not found then
        return jsonb_build_object('recorded', false);
    end if;
    select * into hook from webhooks w where w.org_id = org and w.id = current.webhook_id for no key update;
    if outcome <> 'delivered' and hook.enabled and now() - hook.failing_since >= give_up then
        disabled := format('Disabled at %s: every delivery failed since %s (last: %s).',
                           tolstoy_iso(now()), tolstoy_iso(hook.failing_since),
                           coalesce('HTTP ' || (result ->> 'status_code'), left(result ->> 'error', 300),
                                    'no answer'));
        outcome := 'failed';
    elsif outcome = 'retry' and (retry_at - current.first_attempt_at > give_up or not hook.enabled) then
        outcome := 'failed';
    end if;
    update webhook_deliveries d
    set state = case outcome when 'delivered' then 'delivered' when 'retry' then 'pending' else 'failed' end,
        next_attempt_at = case when outcome = 'retry' then retry_at end,
        finished_at = case when outcome <> 'retry' then now() end,
        last_status_code = (result ->> 'status_code')::integer,
        last_error = left(result ->> 'error', 1000),
        lease_owner = null, lease_token = null, lease_expires_at = null,
        attempt_log = d.attempt_log || jsonb_build_object(
            'attempt', token, 'at', tolstoy_iso(d.last_attempt_at),
            'statusCode', (result ->> 'status_code')::integer,
            'durationMs', (result ->> 'duration_ms')::integer, 'error', left(result ->> 'error', 1000))
    where d.org_id = org and d.id = delivery;
    if outcome = 'delivered' then
        if hook.failing_since is not null then
            update webhooks set failing_since = null where org_id = org and id = hook.id;
        end if;
    elsif disabled is not null then
        update webhooks set enabled = false, disabled_reason = disabled where org_id = org and id = hook.id;
    elsif hook.failing_since is null then
        update webhooks set failing_since = now() where org_id = org and id = hook.id;
    end if;
    if outcome <> 'retry' then
        update webhook_deliveries d
        set next_attempt_at = least(d.next_attempt_at, now())
        where d.org_id = org and d.id = (select n.id from webhook_deliveries n
                                         where n.org_id = org and n.webhook_id = current.webhook_id
                                           and n.state = 'pending'
                                         order by n.seq limit 1);
    end if;
    return jsonb_build_object('recorded', true, 'outcome', outcome, 'disabled', disabled);
end;
$$;

comment on function tolstoy_record_delivery(text, uuid, uuid, integer, jsonb) is
    'Records one attempt of a claimed webhook delivery (fenced by its lease token): delivered, retry later or '
    'failed; disables a webhook failing for the give-up period. Acts for org under row-level security.';

drop trigger webhook_deliveries_place on webhook_deliveries;
drop function tolstoy_place_deliveries();
-- Deliveries placed or not keep their seq: the older claim reads it as event order.
-- squawk-ignore require-concurrent-index-deletion
drop index webhook_deliveries_unplaced_idx;
alter table webhook_deliveries drop column placed;
comment on column webhook_deliveries.seq is null;
-- squawk-ignore require-concurrent-index-creation
create index webhook_deliveries_due_idx on webhook_deliveries (next_attempt_at) where state = 'pending';
-- squawk-ignore require-concurrent-index-creation
create index webhook_deliveries_lease_idx on webhook_deliveries (lease_expires_at) where state = 'sending';
drop table webhook_lines;
