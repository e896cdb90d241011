"""``http_request``: a request to any URL the outbound rules allow, its ``method``, ``url``,
``headers`` and ``body`` rendered from templates. It uses no stored credential. The rest of the
call's life (recorded as starting, retries, unknown outcomes) is calling.Calling's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..calls import HTTP_METHODS, ToolCall, ToolClient
from .calling import Calling
from .kind import Site

if TYPE_CHECKING:
    from ..runner import Run


def config() -> type:
    """The schema of its config, for the API (marshmallow is imported here: a worker never loads it)."""
    from marshmallow import fields, validate

    from ...fieldtypes import Base, url_or_template

    class HttpRequestStepConfig(Base):
        """``http_request``: a request to any allowed URL."""

        method = fields.String(
            required=True, validate=validate.OneOf(HTTP_METHODS + ("HEAD", "OPTIONS"))
        )
        url = fields.String(
            required=True, validate=[validate.Length(min=1, max=4096), url_or_template]
        )
        headers = fields.Dict(keys=fields.String(), values=fields.String())
        body = fields.Raw(allow_none=True)

    return HttpRequestStepConfig


def build(tools: ToolClient, run: Run, site: Site, step: dict, inputs: dict) -> ToolCall:
    """The request, as its rendered config says."""
    return ToolCall(inputs["method"], inputs["url"], dict(inputs.get("headers") or {}), None, inputs.get("body"))


def method(run: Run, step: dict, inputs: dict) -> str:
    """The request's method (GET when the config names none)."""
    return str(inputs.get("method", "GET")).upper()


KIND = Calling(build, method).kind(config)
