-- Quotas per organization (organization_quotas: the operator's overrides; null: the configured
-- default) and what an organization holds against them. Every query acts for :org_id under row-level
-- security: the API key's organization, or the one the admin login switched to (tolstoy/api/quotas.py).
-- The admission of new runs against them is the database's (tolstoy_admit_run, in tolstoy_queue_run).

-- name: get^
-- An organization's overrides (all null: none), or no row when the organization does not exist: its
-- row answers, not a process's memory of the tenants it checked seconds ago (a deleted organization).
select o.id as org_id, q.queued_runs, q.stored_bytes, q.requests_per_second, q.request_burst, q.created_at,
       q.updated_at
from organizations o
left join organization_quotas q on q.org_id = :org_id
where o.id = :org_id;

-- name: get_for_update^
-- The same, the organization locked until the end of the transaction (an If-Match compared before a
-- change; the overrides' row may not exist yet).
select o.id as org_id, q.queued_runs, q.stored_bytes, q.requests_per_second, q.request_burst, q.created_at,
       q.updated_at
from organizations o
left join organization_quotas q on q.org_id = :org_id
where o.id = :org_id
for no key update of o;

-- name: upsert^
-- Set the overrides named in :sent (columns), keeping the others (a first change leaves them null); no
-- row when the organization does not exist.
insert into organization_quotas as q (org_id, queued_runs, stored_bytes, requests_per_second, request_burst)
select :org_id, :queued_runs, :stored_bytes, :requests_per_second, :request_burst
from organizations o
where o.id = :org_id
on conflict (org_id) do update
set queued_runs = case when 'queued_runs' = any(:sent::text[]) then excluded.queued_runs else q.queued_runs end,
    stored_bytes = case when 'stored_bytes' = any(:sent::text[]) then excluded.stored_bytes else q.stored_bytes end,
    requests_per_second = case when 'requests_per_second' = any(:sent::text[]) then excluded.requests_per_second
                               else q.requests_per_second end,
    request_burst = case when 'request_burst' = any(:sent::text[]) then excluded.request_burst
                         else q.request_burst end
returning org_id, queued_runs, stored_bytes, requests_per_second, request_burst, created_at, updated_at;

-- name: request_quota
-- The organization's own request quota (no row, or nulls: the defaults), read by each API process with
-- one of its requests now and then (tolstoy/api/quotas.py RequestBuckets).
select requests_per_second, request_burst
from organization_quotas
where org_id = :org_id;

-- name: usage^
-- The organization's runs not finished and bytes of run history within retention (tolstoy_usage: the
-- organization the transaction acts for), with its overrides; no row when it does not exist.
select u.runs_held, u.bytes_stored, q.queued_runs, q.stored_bytes, q.requests_per_second, q.request_burst,
       q.updated_at
from organizations o
cross join tolstoy_usage() as u (runs_held, bytes_stored)
left join organization_quotas q on q.org_id = :org_id
where o.id = :org_id;
