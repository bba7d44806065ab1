"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}}, including the 400 a
pydantic validation failure becomes (its message without pydantic's prefixes, `param` the
top-level request field at fault)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
          408: "RequestTimeoutError", 413: "BadRequestError", 500: "InternalServerError",
          503: "ServiceUnavailableError"}


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str | None = None,
                 param: str | None = None, code: str | int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type = type_ or _TYPES.get(status, "BadRequestError")
        self.param, self.code, self.headers = param, code if code is not None else status, headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


class ParamError(ValueError):
    """A validator's error about one top-level request field (model validators have no `loc`,
    so the field travels with the error)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


_PREFIXES = ("Value error, ", "Assertion failed, ")  # what pydantic puts before our messages


def validation_error(errors: Sequence[Any]) -> APIError:
    """FastAPI's RequestValidationError.errors() → one 400. The message lists up to five
    errors, each `path: message` (our own ValueErrors are self-describing: no path); `param`
    is the first error's top-level field, or None when the body as a whole is at fault."""
    parts, params = [], []
    for er in errors:
        loc = [x for x in er.get("loc", ()) if x != "body"]
        cause = (er.get("ctx") or {}).get("error")
        msg = str(er.get("msg", "invalid value"))
        for prefix in _PREFIXES:
            msg = msg.removeprefix(prefix)
        if er.get("type") == "json_invalid":
            msg, loc = f"invalid JSON: {cause}" if cause else "invalid JSON", []
        if isinstance(cause, ParamError):
            params.append(cause.param)
        elif loc and isinstance(loc[0], str):
            params.append(loc[0])
        own = er.get("type") == "value_error" or not loc
        part = msg if own else f"{'.'.join(str(x) for x in loc)}: {msg}"
        if part not in parts:
            parts.append(part)
    return APIError(400, "; ".join(parts[:5]) or "invalid request",
                    param=params[0] if params else None)


def error_body(message: str, type_: str, param: str | None = None,
               code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    """The OpenAPI schema of every error body."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": kind}
    for status, kind in ((400, "invalid request or over a limit"), (401, "bad API key"),
                         (404, "unknown model"), (408, "request body stalled"),
                         (413, "request body too large"),
                         (500, "generation failed"), (503, "overloaded, loading or draining"))
}
