-- migrate:up

-- Fail fast instead of queueing behind (and blocking) live traffic.
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Per-organization envelope encryption, and a trail of who decrypted what.
--
-- 1. organization_keys: each organization's data keys (Fernet keys), one row
--    per version, stored only wrapped (encrypted) by a key-encryption key
--    (KEK) that never reaches the database: TOLSTOY_ENCRYPTION_KEY (from the
--    environment or the AWS secret) or an AWS KMS key (TOLSTOY_KMS_KEY_ID).
--    kek_id names the KEK that wrapped the row ('fernet:<fingerprint>' or
--    'kms:<key ARN>'). Version 1 is made by the application the first time an
--    organization encrypts something; `tolstoy secrets rotate` re-wraps rows
--    with the newest KEK (the data keys, and so the data, stay the same);
--    `tolstoy secrets rotate --reencrypt` adds a version, moves every
--    ciphertext to it and sets retired_at on the older ones (which still
--    decrypt stragglers, and may be deleted once nothing uses them).
-- 2. Ciphertexts (tool_credentials.secret, flow_run_steps.sealed) name their
--    data key version: byte 0x01, the version as 4 bytes big-endian, then the
--    Fernet token. Rows written before this migration are plain Fernet tokens
--    under TOLSTOY_ENCRYPTION_KEY; they still decrypt and are rewritten as they
--    are used, or by --reencrypt. tolstoy_key_version() reads the version (null
--    for such a token), so a DBA can see what still uses an old key.
-- 3. secret_reads: one row each time a tool credential is read to be
--    decrypted (a flow step, POST /actions/{id}/execute, the masked listing,
--    --reencrypt), written by the same statement that reads the credential:
--    no read goes unrecorded, and it costs no extra round trip. The services
--    may insert rows, not change or delete them (db/grants.sql).
--
-- Both tables are tenant tables under forced row-level security like the
-- others. Rolling back destroys the data keys, so every ciphertext made since
-- would be lost: the down section refuses while any data key exists.

create table organization_keys (
    org_id uuid not null,
    version integer not null,
    wrapped bytea not null,
    kek_id text not null,
    created_at timestamptz not null default now(),
    retired_at timestamptz,
    constraint organization_keys_pkey primary key (org_id, version),
    -- The keys belong to the organization: deleting it (possible only once its tools are gone) drops them.
    constraint organization_keys_org_id_fkey foreign key (org_id)
        references organizations (id) on delete cascade,
    constraint organization_keys_version_positive check (version >= 1),
    constraint organization_keys_kek_id_length check (char_length(kek_id) between 1 and 2048)
);

comment on table organization_keys is
    'Data keys of each organization (Fernet), one row per version, wrapped by a key-encryption key kept outside '
    'the database; the newest version encrypts, every version decrypts.';
comment on column organization_keys.wrapped is 'The data key encrypted by the KEK kek_id names; never stored in clear.';
comment on column organization_keys.kek_id is
    'Which key-encryption key wrapped it: fernet:<fingerprint of a TOLSTOY_ENCRYPTION_KEY key> or kms:<key ARN>.';
comment on column organization_keys.retired_at is
    'Set by `tolstoy secrets rotate --reencrypt` once every ciphertext moved to a newer version.';

create table secret_reads (
    org_id uuid not null,
    id uuid not null default gen_random_uuid(),
    read_at timestamptz not null default now(),
    actor text not null,
    user_id uuid,
    tool_id uuid,
    credential_id uuid,
    run_id uuid,
    purpose text not null,
    -- No foreign keys: the trail outlives the users, credentials and runs it names.
    constraint secret_reads_pkey primary key (org_id, id),
    constraint secret_reads_actor_known check (actor in ('api', 'worker', 'cli')),
    constraint secret_reads_purpose_length check (char_length(purpose) between 1 and 100)
);

comment on table secret_reads is
    'Audit trail: one row per tool credential read to be decrypted (who, which credential, which run, why).';
comment on column secret_reads.actor is 'api (a request), worker (a flow step) or cli (tolstoy secrets rotate --reencrypt).';
comment on column secret_reads.user_id is 'The acting user (X-User-ID, or the user who started the run); null when none.';
comment on column secret_reads.run_id is 'The flow run (executionId) whose step used the credential; null outside runs.';
comment on column secret_reads.purpose is 'step, execute (POST /actions/{id}/execute), show (masked listing) or reencrypt.';

create index secret_reads_org_id_read_at_idx on secret_reads (org_id, read_at desc);

do $$
declare
    tenant_table text;
begin
    foreach tenant_table in array array['organization_keys', 'secret_reads'] loop
        execute format('alter table %I enable row level security', tenant_table);
        execute format('alter table %I force row level security', tenant_table);
        execute format(
            'create policy tenant_isolation on %I using (org_id = tolstoy_current_org()) '
            'with check (org_id = tolstoy_current_org())', tenant_table);
    end loop;
end;
$$;

-- The data key version a ciphertext names (null for a plain Fernet token written
-- before envelope encryption, or anything else).
create function tolstoy_key_version(ciphertext bytea) returns integer
language sql immutable parallel safe as $$
    select case
        when length(ciphertext) < 5 then null
        when get_byte(ciphertext, 0) = 1 then ('x' || encode(substring(ciphertext from 2 for 4), 'hex'))::bit(32)::integer
    end
$$;

comment on function tolstoy_key_version(bytea) is
    'The organization data key version a ciphertext (tool_credentials.secret, flow_run_steps.sealed) was '
    'encrypted with; null for a plain Fernet token under TOLSTOY_ENCRYPTION_KEY (written before envelope encryption).';

comment on column tool_credentials.secret is
    'The JSON config, encrypted with the organization''s data key (tolstoy_key_version(secret) says which version); '
    'older rows: a Fernet token under TOLSTOY_ENCRYPTION_KEY.';
comment on column flow_run_steps.sealed is
    'The real output, encrypted with the organization''s data key, when it differs from outputs (it held secrets).';

-- migrate:down

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- Row-level security binds the owner too: lift it to look at every organization's keys.
alter table organization_keys no force row level security;

do $$
begin
    if exists (select from organization_keys) then
        raise exception 'organization_keys holds data keys: ciphertexts made with them would become unreadable. '
                        'Roll back only a database where envelope encryption was never used.'
            using errcode = 'object_in_use';
    end if;
end;
$$;

comment on column flow_run_steps.sealed is
    'The real output, encrypted by the application, when it differs from outputs (it held secrets).';
comment on column tool_credentials.secret is
    'Encrypted with TOLSTOY_ENCRYPTION_KEY; `tolstoy secrets rotate` re-encrypts with the newest key.';

drop function tolstoy_key_version(bytea);
drop table secret_reads;
drop table organization_keys;
