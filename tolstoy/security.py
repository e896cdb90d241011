"""Response headers that browsers act on: no sniffing, no referrer, no framing,
a Content-Security-Policy (strict for JSON, just enough for /docs), and CORS
only for the origins an operator lists."""

from __future__ import annotations

import falcon

# JSON answers load nothing.
API_POLICY = "default-src 'none'; frame-ancestors 'none'"
# Swagger UI: its own script and stylesheet from /docs/static, the spec from /openapi.json.
# Styles allow inline attributes (the UI sets them); scripts never run inline.
DOCS_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
               "form-action 'none'")
EXPOSED = ["ETag", "Location", "Link", "X-Next-Cursor", "X-Request-ID", "Retry-After"]


class SecurityHeadersMiddleware:
    """Adds the headers to every answer, errors included."""

    def __init__(self, cors_origins: tuple[str, ...] = ()):
        # CORS stays off (no Access-Control-* headers at all) unless origins are listed.
        self.cors = falcon.CORSMiddleware(allow_origins=list(cors_origins), expose_headers=EXPOSED) \
            if cors_origins else None

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.set_header("X-Frame-Options", "DENY")
        docs = req.path == "/docs" or req.path.startswith("/docs/")
        resp.set_header("Content-Security-Policy", DOCS_POLICY if docs else API_POLICY)
        if self.cors is not None:
            self.cors.process_response(req, resp, resource, req_succeeded)
