"""Every error the server returns has OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

Client mistakes are 4xx with a message naming the field and the fix; only our own bugs are 500.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmstack.errors import LmstackError

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable"}


class APIError(LmstackError):
    """A request the server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.headers = message, status, param, code, headers


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error" if status >= 500
                                                                   else "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.message, err.status, err.param, err.code), status_code=err.status,
                        headers=err.headers)


def api_error_from(err: Exception) -> APIError:
    """Map an exception to the error a client sees (LmstackError = the client's mistake, else ours)."""
    if isinstance(err, APIError):
        return err
    if isinstance(err, LmstackError):  # a SamplingError names the setting it refuses
        return APIError(str(err), param=getattr(err, "param", None))
    return APIError(f"internal server error ({type(err).__name__}); see the server log", status=500)


def validation_message(err: RequestValidationError, content_type: str = "application/json") -> tuple[str, str | None]:
    """Pydantic's first complaint as one line naming the field: 'messages.0.role: Input should be ...'."""
    first = err.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')}); " \
               "send a JSON object", None
    param = ".".join(location) or None
    message = first.get("msg", "invalid value")
    if param is None and first.get("type") == "missing":  # FastAPI reads an empty body as no body
        return "the request body is empty; send a JSON object with Content-Type: application/json", None
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        if "json" not in content_type.lower():  # FastAPI parses JSON only when the request says it is JSON
            return ("the request body must be a JSON object sent with Content-Type: application/json "
                    f"(this request's Content-Type: {content_type or 'none'})"), None
        return "the request body must be a JSON object", None
    return (f"{param}: {message}" if param else message), param


def _api_routes_hint(request: Request) -> str:
    """Where the OpenAI API is, on apps that serve it (`lmstack ui` shares these handlers and does not)."""
    if getattr(request.app.state, "serves_openai_api", False):
        return "; see GET /v1/models, POST /v1/chat/completions, POST /v1/completions"
    return ""


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = validation_message(err, request.headers.get("content-type", ""))
        return error_response(APIError(message, param=param))

    @app.exception_handler(LmstackError)
    async def _lmstack(request: Request, err: LmstackError) -> JSONResponse:
        return error_response(api_error_from(err))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}" + _api_routes_hint(request),
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(err.status_code, str(err.detail))
        if err.status_code == 400 and err.__cause__ is not None:  # FastAPI could not parse the body
            reason = str(err.__cause__).split(";")[0]  # the rest may advise on server settings
            message = f"the request body could not be parsed as JSON ({reason}); send a UTF-8 JSON object"
        return error_response(APIError(message, status=err.status_code))

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        return error_response(api_error_from(err))
