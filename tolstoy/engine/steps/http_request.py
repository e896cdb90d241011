"""``http_request``: a request to any URL the outbound rules allow, its ``method``, ``url``,
``headers`` and ``body`` rendered from templates. It uses no stored credential. The rest of the
call's life (recorded as starting, retries, unknown outcomes) is calling.Calling's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..calls import ToolCall, ToolClient
from .calling import Calling
from .kind import Site

if TYPE_CHECKING:
    from ..runner import Run


def build(tools: ToolClient, run: Run, site: Site, step: dict, inputs: dict) -> ToolCall:
    """The request, as its rendered config says."""
    return ToolCall(inputs["method"], inputs["url"], dict(inputs.get("headers") or {}), None, inputs.get("body"))


def method(run: Run, step: dict, inputs: dict) -> str:
    """The request's method (GET when the config names none)."""
    return str(inputs.get("method", "GET")).upper()


KIND = Calling(build, method).kind()
