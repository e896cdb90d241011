"""The nouns' constraint maps (each noun module's ``CONSTRAINTS``) assemble into one per kind, and a
constraint two nouns name is refused when the app is built, not answered by whichever came last."""

from __future__ import annotations

import pytest

from tolstoy.api import app
from tolstoy.api.errors import Constraints


def test_the_app_answers_from_every_nouns_constraints():
    for noun in app.NOUNS:
        part = getattr(noun, "CONSTRAINTS", Constraints())
        assert part.checks.items() <= app.CONSTRAINTS.checks.items(), noun.__name__
        assert part.unique.items() <= app.CONSTRAINTS.unique.items(), noun.__name__
        assert part.dependents.items() <= app.CONSTRAINTS.dependents.items(), noun.__name__
        assert part.references.items() <= app.CONSTRAINTS.references.items(), noun.__name__
        assert part.service <= app.CONSTRAINTS.service, noun.__name__


@pytest.mark.parametrize("kind", ["checks", "unique", "dependents", "references", "service"])
def test_a_constraint_two_nouns_name_is_refused(kind):
    def part(value: str) -> Constraints:
        return Constraints(**({"service": frozenset({"t_c"})} if kind == "service" else {kind: {"t_c": value}}))

    with pytest.raises(ValueError, match="t_c"):
        Constraints.assemble([part("a"), part("b")])
