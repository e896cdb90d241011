"""Assertions on the contract's error body, shared by the resource tests."""


def assert_error(result, status: int, field: str | None = None) -> dict:
    """The contract's error body; when field is given, errors[0] names it."""
    assert result.status_code == status, result.text
    body = result.json
    assert body["statusCode"] == status
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        assert body["errors"][0]["field"] == field, body
        assert body["errors"][0]["message"]
    return body


def bad_request(result, field: str) -> str | None:
    """None when result is a 400 in the contract's shape whose errors[0] names field;
    otherwise a description of what came back (tables collect these)."""
    body = result.json if result.text else None
    errors = body.get("errors") if isinstance(body, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    if (result.status_code == 400 and body.get("statusCode") == 400
            and body.get("error") == "Bad Request" and body.get("message")
            and first.get("field") == field and first.get("message")):
        return None
    return f"expected 400 naming {field!r}, got {result.status_code} {result.text}"
