-- Demo data for `tolstoy db seed`. Fixed ids and ON CONFLICT DO NOTHING make it
-- idempotent: running it twice changes nothing. Never run against production.

-- Row-level security: act for the demo organization for the rest of this transaction.
select set_config('app.org_id', '00000000-0000-4000-8000-000000000001', true);

insert into organizations (id, name)
values ('00000000-0000-4000-8000-000000000001', 'Acme Robotics')
on conflict do nothing;

insert into users (org_id, id, email, name)
values
    ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000101',
     'ada@acme.example', 'Ada Lovelace'),
    ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000102',
     'grace@acme.example', 'Grace Hopper')
on conflict do nothing;

insert into tools (org_id, id, name, base_url, auth_type)
values ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000201',
        'GitHub', 'https://api.github.com', 'bearer')
on conflict do nothing;

insert into actions (org_id, id, tool_id, name, key, method, endpoint, headers, input_schema)
values
    ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000301',
     '00000000-0000-4000-8000-000000000201', 'Get issue', 'github.get_issue', 'GET',
     '/repos/{owner}/{repo}/issues/{number}',
     '{"Accept": "application/vnd.github+json"}',
     '{"type": "object", "required": ["owner", "repo", "number"],
       "properties": {"owner": {"type": "string"}, "repo": {"type": "string"},
                      "number": {"type": "integer", "minimum": 1}}}'),
    ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000302',
     '00000000-0000-4000-8000-000000000201', 'Comment on issue', 'github.create_comment', 'POST',
     '/repos/{owner}/{repo}/issues/{number}/comments',
     '{"Accept": "application/vnd.github+json"}',
     '{"type": "object", "required": ["owner", "repo", "number", "body"],
       "properties": {"owner": {"type": "string"}, "repo": {"type": "string"},
                      "number": {"type": "integer", "minimum": 1}, "body": {"type": "string"}}}')
on conflict do nothing;

insert into flows (org_id, id, name, description, steps)
values ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000401',
        'Triage issue', 'Fetch an issue and thank its author.',
        '[{"id": "fetch", "type": "action", "name": "Get issue",
           "config": {"actionKey": "github.get_issue",
                      "inputs": {"owner": "{{ variables.owner }}", "repo": "{{ variables.repo }}",
                                 "number": "{{ variables.number }}"}}},
          {"id": "thank", "type": "action", "name": "Thank the author",
           "config": {"actionKey": "github.create_comment",
                      "inputs": {"owner": "{{ variables.owner }}", "repo": "{{ variables.repo }}",
                                 "number": "{{ variables.number }}",
                                 "body": "Thanks @{{ steps.fetch.body.user.login }}!"}},
           "dependsOn": ["fetch"], "executeIf": "{{ steps.fetch.status == 200 }}"}]')
on conflict do nothing;
