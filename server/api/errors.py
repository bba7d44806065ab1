"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

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
