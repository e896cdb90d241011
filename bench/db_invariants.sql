-- What must hold of a Tolstoy database once its workers have had time to settle: after a restore
-- (bench/drill.py), after a soak. Each query lists the rows that break its rule (none is good); run
-- as a superuser (it alone sees every organization). Checked by bench/db_invariants.py.

-- name: running_without_a_live_lease
-- A run is `running` only under a worker's unexpired lease: one left `running` past its lease
-- after the workers settled was dropped by everyone.
select r.org_id, r.id, r.status::text, r.lease_owner, r.lease_expires_at
from flow_runs r
where r.status = 'running' and (r.lease_expires_at is null or r.lease_expires_at < now() - interval '5 seconds');

-- name: due_but_unclaimed
-- A queued run that fell due long ago and no worker took: the queue is stuck.
select r.org_id, r.id, r.run_after
from flow_runs r
where r.status = 'queued' and r.run_after < now() - :grace_seconds * interval '1 second';

-- name: finished_with_unfinished_steps
-- A finished run leaves no step running or waiting (a sleeping delay, a parked wait).
select r.org_id, r.id, r.status::text, s.step_id, s.status
from flow_runs r
join flow_run_steps s on s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at
where r.status in ('completed', 'failed', 'cancelled') and s.status in ('running', 'waiting');

-- name: finished_without_a_time
-- Finished runs say when; unfinished ones do not.
select r.org_id, r.id, r.status::text, r.finished_at
from flow_runs r
where (r.status in ('completed', 'failed', 'cancelled')) <> (r.finished_at is not null);

-- name: completed_with_an_error
-- A completed run has no error; a failed one has one.
select r.org_id, r.id, r.status::text, r.error
from flow_runs r
where (r.status = 'completed' and r.error is not null) or (r.status = 'failed' and r.error is null);

-- name: steps_without_a_run
-- Every checkpoint belongs to a run.
select s.org_id, s.run_id, s.step_id
from flow_run_steps s
where not exists (select 1 from flow_runs r
                  where r.org_id = s.org_id and r.id = s.run_id and r.created_at = s.run_created_at);

-- name: signals_without_a_run
-- Every signal was sent to a run that exists.
select g.org_id, g.id, g.run_id, g.signal
from flow_run_signals g
where not exists (select 1 from flow_runs r where r.org_id = g.org_id and r.id = g.run_id);

-- name: signals_taken_by_no_finished_step
-- A signal a wait step took: that step finished (a taken signal whose step is still waiting was taken
-- twice or lost).
select g.org_id, g.id, g.run_id, g.step_id
from flow_run_signals g
join flow_runs r on r.org_id = g.org_id and r.id = g.run_id
where g.consumed_at is not null
  and not exists (select 1 from flow_run_steps s
                  where s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at
                    and s.step_id = g.step_id and s.status in ('completed', 'failed'));

-- name: pending_signals_of_finished_runs
-- A signal nobody took, to a run that finished without waiting for it, is fine (a 409 refuses new
-- ones, not old ones); one to a run still waiting on that signal must have woken it: not queued
-- in the far future.
select g.org_id, g.id, g.run_id, g.signal
from flow_run_signals g
join flow_runs r on r.org_id = g.org_id and r.id = g.run_id
join flow_run_steps s on s.org_id = r.org_id and s.run_id = r.id and s.run_created_at = r.created_at
where g.consumed_at is null and r.status = 'queued' and s.status = 'waiting'
  and s.inputs ->> 'signal' = g.signal and r.run_after > g.created_at + interval '1 minute';

-- name: children_without_a_parent
-- A child run's parent exists.
select c.org_id, c.id, c.parent_run_id
from flow_runs c
where c.parent_run_id is not null
  and not exists (select 1 from flow_runs p where p.org_id = c.org_id and p.id = c.parent_run_id);

-- name: deliveries_stuck
-- The outbox (event webhooks): a delivery is leased only while a worker sends it, and a pending one
-- falls due.
select d.org_id, d.id, d.state, d.lease_expires_at, d.next_attempt_at
from webhook_deliveries d
where (d.lease_expires_at is not null and d.lease_expires_at < now() - interval '5 seconds')
   or (d.state = 'pending' and d.next_attempt_at < now() - :grace_seconds * interval '1 second');
