"""Template bounds that need no database: ``~`` joins and the globals left out of the sandbox."""

from __future__ import annotations

import pytest

from tolstoy.engine.templates import TemplateFailure, render

CONTEXT = {"variables": {"who": "Ada"}, "steps": {}}


def test_tilde_still_joins():
    assert render("{{ 'Hello ' ~ variables.who }}", CONTEXT) == "Hello Ada"


def test_doubling_a_string_with_tilde_stops_at_the_size_bound():
    source = "{% set a = 'xxxxxxxxxxxxxxxx' %}" + "{% set a = a ~ a %}" * 24 + "{{ a | length }}"
    with pytest.raises(TemplateFailure, match="longer than"):
        render(source, CONTEXT)


def test_lipsum_is_not_offered():
    with pytest.raises(TemplateFailure, match="lipsum"):
        render("{{ lipsum(20000) }}", CONTEXT)
