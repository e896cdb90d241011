"""Secrets by derivation (tolstoy.engine.templates): a template string whose render *read* a hidden
part of the context is hidden whole, whatever it did with it; one that copied hidden parts keeps
them hidden where they are; one that read only what is not hidden hides nothing."""

from __future__ import annotations

import pytest

from tolstoy.engine.templates import TemplateFailure, condition, render, render_tracked, scope

TOKEN = "acc-7Hq2LmZ9xW4pRt8vKd3N"
STEPS = {"login": {"status": 200, "body": {"access_token": TOKEN, "user": "ada", "roles": ["r1", TOKEN],
                                            "entries": [{"id": 1, "key": TOKEN}, {"id": 2, "key": "plain"}]}},
         "other": {"n": 3}}
HIDDEN = {"login": {"body": {"access_token": True, "roles": {1: True}, "entries": {0: {"key": True}}}}}
CONTEXT = scope({"variables": {"who": "Ada"}, "steps": STEPS}, {"steps": HIDDEN})

LAUNDERING = [
    "{{ steps.login.body.access_token }}",
    "{{ steps.login.body.access_token | reverse }}",
    "{{ steps.login.body.access_token[1:] }}",
    "{{ steps.login.body.access_token[::-1] }}",
    "{{ steps.login.body.access_token | join(' ') }}",
    "{{ steps.login.body.access_token | list }}",
    "{{ steps.login.body.access_token | upper }}",
    "{{ steps.login.body.access_token | replace('-', '_') }}",
    "{{ steps.login.body.access_token | length }}",
    "{{ steps.login.body.access_token == 'guess' }}",
    "{{ 'x' ~ steps.login.body.access_token ~ 'y' }}",
    "{{ 'x' + steps.login.body.access_token }}",
    "{{ '%s!' % steps.login.body.access_token }}",
    "{{ '{}!'.format(steps.login.body.access_token) }}",
    "{{ '{access_token}'.format_map(steps.login.body) }}",
    "{{ steps.login.body['access_token'] | first }}",
    "{{ steps.login['body'].get('access_token') }}",
    "{{ steps.login.body | tojson }}",
    "{{ steps.login.body | string }}",
    "{{ steps.login.body | pprint }}",
    "{{ steps.login.body | dictsort }}",
    "{{ steps.login.body.values() | list }}",
    "{{ steps.login.body | items | list }}",
    "{{ steps.login | string | length }}",
    "token: {{ steps.login.body }}",
    "{{ steps.login.body.roles | join(',') }}",
    "{{ steps.login.body.roles | last }}",
    "{{ steps.login.body.roles | sort | first }}",
    "{{ steps.login.body.roles + [] }}",
    "{{ 'acc' in steps.login.body.roles }}",
    "{{ steps.login.body.entries | map(attribute='key') | list }}",
    "{{ steps.login.body.entries | selectattr('key', 'equalto', 'x') | list }}",
    "{% for role in steps.login.body.roles %}{{ role[:3] }}{% endfor %}",
    "{% for k, v in steps.login.body.items() %}{{ k }}{% endfor %}",
    "{% set t = steps.login.body.access_token %}{{ t[0] }}",
    "{% set ns = namespace(t=steps.login.body.access_token) %}{{ ns.t | wordcount }}",
    "{% macro m(a) %}{{ a | lower }}{% endmacro %}{{ m(steps.login.body.access_token) }}",
    "{{ (steps.login.body.access_token | length) * 2 + 1 }}",
    "{{ steps.login.body.access_token | list | map('upper') | join }}",
    "{{ steps.login.body.access_token | int(default=7) }}",
    "{% if steps.login.body.access_token.startswith('acc') %}yes{% endif %}",
]


@pytest.mark.parametrize("template", LAUNDERING)
def test_reading_a_hidden_value_hides_the_rendered_value_whatever_the_template_does(template):
    value, hidden = render_tracked({"out": template}, CONTEXT)
    assert hidden == {"out": True}, value


CLEAN = [
    ("{{ steps.login.body.user }}", "ada"),
    ("{{ steps.login.status + 1 }}", 201),
    ("{{ steps.login.body | length }}", 4),
    ("{{ steps.login.body.roles | length }}", 2),
    ("{{ steps.login.body.roles[0] }}", "r1"),
    ("{{ steps.login.body.roles | first }}", "r1"),
    ("{{ steps.login.body.keys() | list }}", ["access_token", "user", "roles", "entries"]),
    ("{{ 'access_token' in steps.login.body }}", True),
    ("{{ steps.login.body.entries[1].key }}", "plain"),
    ("{{ steps.other.n * 2 }}", 6),
    ("hi {{ variables.who }}", "hi Ada"),
    ("{% for k in steps.login.body %}{{ k[0] }}{% endfor %}", "aure"),
]


@pytest.mark.parametrize("template,expected", CLEAN)
def test_reading_only_what_is_not_hidden_hides_nothing(template, expected):
    assert render_tracked({"out": template}, CONTEXT) == ({"out": expected}, None)


def test_a_copy_keeps_the_hidden_parts_hidden_where_they_are():
    value, hidden = render_tracked({"body": "{{ steps.login.body }}", "both": "{{ [steps.login.body.roles, 1] }}",
                                    "slice": "{{ steps.login.body.roles[1:] }}"}, CONTEXT)
    assert value["body"] == STEPS["login"]["body"] and value["both"] == [["r1", TOKEN], 1]
    assert value["slice"] == [TOKEN]
    assert hidden == {"body": HIDDEN["login"]["body"], "both": {0: {1: True}}, "slice": {0: True}}


def test_a_hidden_top_level_name_is_marked_when_resolved():
    context = scope({"item": TOKEN, "index": 4}, {"item": True})
    assert render_tracked(["{{ item | reverse }}", "{{ index }}"], context) == ([TOKEN[::-1], 4], {0: True})
    partly = scope({"item": {"a": TOKEN, "b": 1}}, {"item": {"a": True}})
    assert render_tracked(["{{ item.b }}", "{{ item.a[:3] }}"], partly) == ([1, "acc"], {1: True})


def test_without_hidden_parts_rendering_is_what_it_was():
    plain = {"variables": {"who": "Ada"}, "steps": STEPS}
    assert scope(plain, {"steps": None}) is plain
    assert render("{{ steps.login.body.access_token | reverse }}", plain) == TOKEN[::-1]
    assert render_tracked({"a": "{{ steps.login.body }}"}, plain) == ({"a": STEPS["login"]["body"]}, None)
    assert condition("{{ steps.login.body.user == 'ada' }}", CONTEXT) is True


def test_the_views_hold_no_reachable_real_value():
    for template in ("{{ steps.login.body._value }}", "{{ steps.login.body.__dict__ }}",
                     "{{ steps.login.body.roles._hidden }}"):
        with pytest.raises(TemplateFailure):
            render(template, CONTEXT)


def test_a_failing_template_that_read_a_secret_says_why_without_the_value():
    with pytest.raises(TemplateFailure) as failed:
        render("{{ steps.other[steps.login.body.access_token | upper] }}", CONTEXT)
    assert TOKEN.upper() not in str(failed.value) and "details withheld" in str(failed.value)
    with pytest.raises(TemplateFailure, match="'dict object' has no attribute 'missing'"):
        render("{{ steps.other.missing }}", CONTEXT)  # nothing secret read: the message is whole


def test_a_failed_render_leaves_no_mark_for_the_next():
    with pytest.raises(TemplateFailure):
        render("{{ steps.login.body.access_token | nosuchfilter }}", CONTEXT)
    assert render_tracked({"a": "{{ steps.other.n }}"}, CONTEXT) == ({"a": 3}, None)
