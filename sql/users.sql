-- name: list
-- One keyset page of an organization's users, newest first; email filter ignores case.
select id, org_id, email, name, created_at, updated_at
from users
where org_id = :org_id
  and (:email::text is null or lower(email) = lower(:email::text))
  and (:after_created_at::timestamptz is null
       or (created_at, id) < (:after_created_at::timestamptz, :after_id::uuid))
order by created_at desc, id desc
limit :limit;

-- name: get^
-- One user of the organization.
select id, org_id, email, name, created_at, updated_at
from users
where org_id = :org_id and id = :id;

-- name: get_for_update^
-- One user of the organization, locked until the end of the transaction.
select id, org_id, email, name, created_at, updated_at
from users
where org_id = :org_id and id = :id
for update;

-- name: insert^
-- Create a user; users_org_id_email_key refuses a duplicate email (any case).
insert into users (org_id, email, name)
values (:org_id, :email, :name)
returning id, org_id, email, name, created_at, updated_at;

-- name: update^
-- Replace the writable columns of one user.
update users
set email = :email, name = :name
where org_id = :org_id and id = :id
returning id, org_id, email, name, created_at, updated_at;

-- name: delete!
-- Delete one user; execution_logs_user_id_fkey refuses while logs name them.
delete from users
where org_id = :org_id and id = :id;

-- name: exists$
-- True when the organization has this user (the user of a connection, GET /auth/{toolKey}/login).
select exists (
    select 1 from users where org_id = :org_id and id = :id
);
