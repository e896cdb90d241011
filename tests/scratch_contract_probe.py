import json, base64
def enc(v): return base64.urlsafe_b64encode(json.dumps(v).encode()).decode().rstrip("=")
def test_probe(client, api):
    org = api.org()
    flow = api.flow(org)
    h = api.headers(org)
    for v in ([10**30], [-5], [2**31], [True], [1.5]):
        r = client.simulate_get(f"/flows/{flow['id']}/versions", params={"cursor": enc(v)}, headers=h)
        print(v, r.status_code, r.text[:150])
    for v in (["0001-01-01T00:00:00+14:00", flow["id"]], ["9999-12-31T23:59:59-14:00", flow["id"]], ["2026-01-01", flow["id"]], ["2026-01-01T00:00:00Z", "x"], ["2026-01-01T00:00:00Z", flow["id"], 1], {"a": 1}, "x", None, ["2026-01-01T00:00:00Z", "\u0000"]):
        r = client.simulate_get("/flows", params={"cursor": enc(v)}, headers=h)
        print(v, r.status_code, r.text[:150])
    for c in ("!!!", "=", "a", "ab", "%00", "\u00e9"):
        r = client.simulate_get("/flows", params={"cursor": c}, headers=h)
        print(repr(c), r.status_code, r.text[:150])
