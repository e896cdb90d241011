-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Organizations are the tenants. Every other table carries org_id and leads
-- its keys with it, so the schema can be distributed by org_id (Citus), with
-- organizations as a reference table.
create table organizations (
    id uuid not null default gen_random_uuid(),
    name text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint organizations_pkey primary key (id),
    constraint organizations_name_length check (char_length(name) between 1 and 200)
);

comment on table organizations is 'Tenants. Every tenant table references one organization.';
comment on column organizations.name is 'Display name, 1 to 200 characters; not unique.';

-- Keyset pagination walks (created_at desc, id desc).
create index organizations_created_at_id_idx on organizations (created_at desc, id desc);

create trigger organizations_touch_updated_at
    before update on organizations
    for each row execute function tolstoy_touch_updated_at();

create table users (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    email text not null,
    name text,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint users_pkey primary key (org_id, id),
    constraint users_org_id_fkey foreign key (org_id)
        references organizations (id) on delete restrict,
    constraint users_email_length check (char_length(email) between 3 and 320),
    constraint users_name_length check (char_length(name) <= 200)
);

comment on table users is 'People acting inside one organization; recorded as the actor of execution logs.';
comment on column users.email is 'Stored as sent; unique per organization ignoring case (users_org_id_email_key).';

-- Backs the 409 on a duplicate email and the case-insensitive ?email= filter.
create unique index users_org_id_email_key on users (org_id, lower(email));
create index users_org_id_created_at_id_idx on users (org_id, created_at desc, id desc);

create trigger users_touch_updated_at
    before update on users
    for each row execute function tolstoy_touch_updated_at();

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

drop table users;
drop table organizations;
