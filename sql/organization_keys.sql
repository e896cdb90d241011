-- Organizations' data keys (the envelope_encryption migration): stored wrapped
-- by a key-encryption key, unwrapped and cached by tolstoy/engine/keys.py.

-- name: versions
-- Every data key version of an organization, oldest first; fresh says the row was made by this
-- very transaction (or one that started after it), so it may yet roll back and must not be cached.
select org_id, version, wrapped, kek_id, created_at, retired_at, created_at >= now() as fresh
from organization_keys
where org_id = :org_id
order by version;

-- name: create_first^
-- An organization's first data key; nothing when another transaction made it first.
insert into organization_keys (org_id, version, wrapped, kek_id)
values (:org_id, 1, :wrapped, :kek_id)
on conflict (org_id, version) do nothing
returning org_id, version, wrapped, kek_id, created_at, retired_at, true as fresh;

-- name: add_version^
-- A new data key version after the newest (tolstoy secrets rotate --reencrypt).
insert into organization_keys (org_id, version, wrapped, kek_id)
select :org_id, coalesce(max(k.version), 0) + 1, :wrapped, :kek_id
from organization_keys k
where k.org_id = :org_id
returning org_id, version, wrapped, kek_id, created_at, retired_at, true as fresh;

-- name: to_rewrap
-- The data keys of an organization wrapped by another KEK than :kek_id, locked for re-wrapping.
select org_id, version, wrapped, kek_id
from organization_keys
where org_id = :org_id and kek_id <> :kek_id
order by version
for update;

-- name: rewrap!
-- Store a data key wrapped by another KEK (the data key itself is the same).
update organization_keys
set wrapped = :wrapped, kek_id = :kek_id
where org_id = :org_id and version = :version;

-- name: settle_left$
-- Seconds until every process has dropped its cached copy of an organization's keys, counted from
-- when its newest version was made (processes keep them :seconds, TOLSTOY_DATA_KEY_TTL); 0 when past.
select greatest(0, extract(epoch from max(created_at) + make_interval(secs => :seconds) - now()))::float8
from organization_keys
where org_id = :org_id;

-- name: retire!
-- Mark the versions before :version retired (every ciphertext moved to :version or later).
update organization_keys
set retired_at = now()
where org_id = :org_id and version < :version and retired_at is null;
