"""Kubernetes-style API errors and how they travel over gRPC.

An ``ApiError`` carries Kubernetes' reason (NotFound, Conflict, ...) and
message. On the wire it is a gRPC status code chosen by the reason, with the
message as the status details and the whole meta.v1.Status in the trailing
metadata key ``apiserver-status-bin``; ``from_rpc_error`` turns it back into
an ``ApiError`` on the client side.
"""

from __future__ import annotations

import grpc

from apiserver.pb import meta_pb2

STATUS_METADATA_KEY = "apiserver-status-bin"

# reason -> (gRPC code, the HTTP code Kubernetes answers with)
REASONS: dict[str, tuple[grpc.StatusCode, int]] = {
    "BadRequest": (grpc.StatusCode.INVALID_ARGUMENT, 400),
    "Invalid": (grpc.StatusCode.INVALID_ARGUMENT, 422),
    "NotFound": (grpc.StatusCode.NOT_FOUND, 404),
    "AlreadyExists": (grpc.StatusCode.ALREADY_EXISTS, 409),
    "Conflict": (grpc.StatusCode.ABORTED, 409),
    "Expired": (grpc.StatusCode.OUT_OF_RANGE, 410),
    "Gone": (grpc.StatusCode.OUT_OF_RANGE, 410),
    "Forbidden": (grpc.StatusCode.PERMISSION_DENIED, 403),
    "Unauthorized": (grpc.StatusCode.UNAUTHENTICATED, 401),
    "MethodNotAllowed": (grpc.StatusCode.UNIMPLEMENTED, 405),
    "RequestEntityTooLarge": (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    "TooManyRequests": (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    "Timeout": (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    "ServiceUnavailable": (grpc.StatusCode.UNAVAILABLE, 503),
    "InternalError": (grpc.StatusCode.INTERNAL, 500),
}
_REASON_OF_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: "BadRequest",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.ABORTED: "Conflict",
    grpc.StatusCode.OUT_OF_RANGE: "Expired",
    grpc.StatusCode.PERMISSION_DENIED: "Forbidden",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthorized",
    grpc.StatusCode.UNIMPLEMENTED: "MethodNotAllowed",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "TooManyRequests",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Timeout",
    grpc.StatusCode.UNAVAILABLE: "ServiceUnavailable",
}

_CODE_OF_HTTP = {http: code for code, http in reversed(REASONS.values())}


class ApiError(Exception):
    """An error with a Kubernetes reason; ``causes`` are (field, reason, message)."""

    def __init__(self, reason: str, message: str, *, kind: str = "", name: str = "",
                 causes: list[tuple[str, str, str]] | None = None, code: int = 0) -> None:
        super().__init__(message)
        # ``code``: an HTTP code chosen by someone else (an admission webhook's Status),
        # kept with whatever reason came with it, even none
        self.code = code if 400 <= code <= 599 else 0
        self.reason = reason if reason in REASONS or self.code else "InternalError"
        self.message = message
        self.kind = kind
        self.name = name
        self.causes = list(causes or [])

    @property
    def grpc_code(self) -> grpc.StatusCode:
        if self.reason in REASONS:
            return REASONS[self.reason][0]
        return _CODE_OF_HTTP.get(self.code, grpc.StatusCode.INTERNAL if self.code >= 500
                                 else grpc.StatusCode.FAILED_PRECONDITION)

    @property
    def http_code(self) -> int:
        return self.code or REASONS[self.reason][1]

    def to_status(self) -> meta_pb2.Status:
        status = meta_pb2.Status(status="Failure", message=self.message, reason=self.reason,
                                 code=self.http_code)
        status.details.name = self.name
        status.details.kind = self.kind
        for field, reason, message in self.causes:
            status.details.causes.add(field=field, reason=reason, message=message)
        return status

    @classmethod
    def from_status(cls, status: meta_pb2.Status) -> "ApiError":
        causes = [(c.field, c.reason, c.message) for c in status.details.causes]
        return cls(status.reason, status.message, kind=status.details.kind,
                   name=status.details.name, causes=causes,
                   code=status.code if status.reason not in REASONS else 0)

    def __repr__(self) -> str:
        return f"ApiError({self.reason!r}, {self.message!r})"


def http_code_of(code: grpc.StatusCode) -> int:
    """The HTTP code Kubernetes would answer for a call that ended with ``code``."""
    if code == grpc.StatusCode.OK:
        return 200
    reason = _REASON_OF_CODE.get(code)
    return REASONS[reason][1] if reason else 500


def trailing_metadata(err: ApiError) -> tuple[tuple[str, bytes], ...]:
    return ((STATUS_METADATA_KEY, err.to_status().SerializeToString()),)


async def abort(context, err: ApiError):
    """Ends a grpc.aio call with ``err`` (raises, as context.abort does)."""
    context.set_trailing_metadata(trailing_metadata(err))
    await context.abort(err.grpc_code, err.message)


def from_rpc_error(e: grpc.RpcError) -> ApiError:
    """The ApiError a failed call carried, or one derived from its gRPC code."""
    for key, value in (e.trailing_metadata() or ()):
        if key == STATUS_METADATA_KEY:
            status = meta_pb2.Status()
            status.ParseFromString(value)
            return ApiError.from_status(status)
    reason = _REASON_OF_CODE.get(e.code(), "InternalError")
    return ApiError(reason, e.details() or str(e.code()))


# ---- constructors with Kubernetes' messages ----

def _qualified(resource: str, name: str) -> str:
    return f'{resource} "{name}"' if name else resource


def not_found(resource: str, name: str) -> ApiError:
    return ApiError("NotFound", f"{_qualified(resource, name)} not found", kind=resource, name=name)


def already_exists(resource: str, name: str) -> ApiError:
    return ApiError("AlreadyExists", f"{_qualified(resource, name)} already exists",
                    kind=resource, name=name)


def conflict(resource: str, name: str, why: str = "") -> ApiError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError("Conflict", f"Operation cannot be fulfilled on {_qualified(resource, name)}: {why}",
                    kind=resource, name=name)


def invalid(kind: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """``causes``: (field, reason, detail), reason as Kubernetes' field errors:
    FieldValueRequired -> "Required value", FieldValueInvalid -> "Invalid value", ..."""
    text = ", ".join(f"{field}: {detail}" for field, _, detail in causes)
    return ApiError("Invalid", f'{kind} "{name}" is invalid: {text}', kind=kind, name=name, causes=causes)


def bad_request(message: str) -> ApiError:
    return ApiError("BadRequest", message)


def forbidden(resource: str, name: str, why: str) -> ApiError:
    return ApiError("Forbidden", f"{_qualified(resource, name)} is forbidden: {why}", kind=resource, name=name)


def unauthorized() -> ApiError:
    """No credentials, or credentials nobody vouches for: kube-apiserver says no more than this."""
    return ApiError("Unauthorized", "Unauthorized")


def expired(message: str) -> ApiError:
    return ApiError("Expired", message)


def too_large(message: str = "Request entity too large") -> ApiError:
    return ApiError("RequestEntityTooLarge", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError("MethodNotAllowed", message)


def unavailable(message: str) -> ApiError:
    return ApiError("ServiceUnavailable", message)


def timeout(message: str) -> ApiError:
    return ApiError("Timeout", message)


def internal(message: str) -> ApiError:
    return ApiError("InternalError", message)
