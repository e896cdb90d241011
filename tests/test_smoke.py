def test_create_org(api):
    org = api.org()
    assert org["name"] == "Acme"
