-- The statements that open and close a unit of work (tolstoy/db/database.py).
-- Every request and engine step sends enter (or enter_key) in the same round
-- trip as its first query; see the unit_of_work migration for what it checks.

-- name: begin!
-- Open an explicit transaction (a unit of work of more than one statement).
begin;

-- name: begin_repeatable!
-- Open a transaction whose reads all see one snapshot (GET requests of more than one statement).
begin isolation level repeatable read;

-- name: commit!
-- End the unit of work, keeping what it wrote.
commit;

-- name: rollback!
-- End the unit of work, undoing what it wrote.
rollback;

-- name: enter!
-- Act for :org_id (none when null) with :user_id as the acting user until the transaction ends;
-- raises TS001/TS002 for an organization or user that does not exist. :quotas: the configured quota
-- defaults the admission of a new run reads (tolstoy_admit_run; '' for none). :audit (JSON, or '' for
-- none) is who the unit's configuration changes are recorded as (the tolstoy_audit trigger).
select tolstoy_enter(:org_id::uuid, :user_id::uuid, :timeout_ms::integer),
       set_config('tolstoy.quotas', :quotas, true), set_config('app.audit', :audit, true);

-- name: enter_known!
-- The same for an organization (or none: '') and user that passed tolstoy_enter seconds ago
-- in this process: only set them, without checking again. A unit of the admin login (the
-- /organizations routes) acts for none: its role, not a setting, lets it see every organization.
select set_config('app.org_id', :org_id, true), set_config('statement_timeout', :timeout, true),
       set_config('tolstoy.quotas', :quotas, true), set_config('app.audit', :audit, true);

-- name: enter_key$
-- Act for the organization of an API key (returned); raises TS003 for an unknown or revoked key.
-- :quotas and :audit as for enter.
select tolstoy_enter_key(:key_hash::bytea, :user_id::uuid, :timeout_ms::integer),
       set_config('tolstoy.quotas', :quotas, true), set_config('app.audit', :audit, true);

-- name: key_grant^
-- The organization, scopes and bound user (null: none) of a usable API key (TS003 for an
-- unknown, revoked or expired one).
select org_id, scopes, user_id
from tolstoy_key_grant(:key_hash::bytea);

-- name: listen!
-- Wake idle workers when a run is queued (flow_runs_notify sends on this channel).
listen tolstoy_runs;
