"""Every door that is not a tenant route is reviewed (docs/security.md, "Operator surfaces"):
the routes whose resource says ``access = "public"``, ``"organizations"`` or ``"operator"``,
the sinks and the static folders of the app ``create_app`` builds (the contract's route table
and what create_app adds: the console, /metrics) must be exactly tests/support.py's
REVIEWED_ROUTES, with their methods. A new public route fails here until someone has said
who may reach it and why."""

from __future__ import annotations

from support import REVIEWED_ROUTES, app_routes


def served_outside_tenancy(app) -> dict[str, tuple[str, str]]:
    found = {}
    for template, (resource, methods) in app_routes(app).items():
        kind = template.split(" ")[0]
        access = "public" if kind in ("sink", "static") else getattr(resource, "access", "tenant")
        if access != "tenant":
            found[template] = (access, " ".join(sorted(methods)))
    return found


def test_every_route_outside_tenancy_is_on_the_reviewed_list(client):
    served = served_outside_tenancy(client.app)
    reviewed = {template: (access, methods) for template, (access, methods, _, _) in REVIEWED_ROUTES.items()}
    unreviewed = {t: v for t, v in served.items() if reviewed.get(t) != v}
    assert not unreviewed, f"review these and add them to tests/support.py REVIEWED_ROUTES: {unreviewed}"
    assert served == reviewed, f"no longer served, remove from REVIEWED_ROUTES: {set(reviewed) - set(served)}"

