-- Organizations are the tenants themselves, so these queries have no org_id
-- filter; every other file's queries do.

-- name: list
-- One keyset page of organizations, newest first.
select id, name, created_at, updated_at
from organizations
where (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: get^
-- One organization by id.
select id, name, created_at, updated_at
from organizations
where id = :id;

-- name: get_for_update^
-- One organization by id, locked until the end of the transaction.
select id, name, created_at, updated_at
from organizations
where id = :id
for update;

-- name: insert^
-- Create an organization; the database picks id and timestamps.
insert into organizations (name)
values (:name)
returning id, name, created_at, updated_at;

-- name: update^
-- Replace the writable columns; the trigger keeps updated_at if nothing changed.
update organizations
set name = :name
where id = :id
returning id, name, created_at, updated_at;

-- name: delete!
-- Delete an organization; foreign keys refuse while tenant rows remain.
delete from organizations
where id = :id;

-- name: all_ids
-- Every organization's id, for maintenance that walks tenants one by one.
select id
from organizations
order by id;
