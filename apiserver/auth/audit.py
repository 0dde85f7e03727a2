"""The audit log (--audit-log-path): one JSON line per request, kube-apiserver's
audit.k8s.io/v1 Event at level Metadata: who (user, groups, source IP, user
agent), what (verb, resource, namespace, name, the URI or gRPC method), and the
answer's code, once the response is complete (a watch: once it started).
Bodies are never logged, so no Secret's data reaches the file. "-" logs to
standard output."""

from __future__ import annotations

import datetime
import json
import sys
import uuid

from apiserver.auth.rbac import Attributes


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self.file = sys.stdout if path == "-" else open(path, "a", buffering=1)  # noqa: SIM115 (lives with the server)

    def close(self) -> None:
        if self.file is not sys.stdout:
            self.file.close()

    def event(self, *, received: str, uri: str, verb: str, user, attrs: Attributes | None, code: int,
              source: str = "", user_agent: str = "", stage: str = "ResponseComplete",
              impersonated=None, message: str = "") -> dict:
        """``stage``: ResponseStarted for a streamed answer (a watch) logged as it begins;
        ``impersonated``: the user the request acted as (user: who sent it), as upstream's
        impersonatedUser; ``message``: a refused authentication's (gate.attempted)."""
        event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
                 "auditID": str(uuid.uuid4()), "stage": stage, "requestURI": uri,
                 "verb": attrs.verb if attrs else verb,
                 "user": user.info() if user else {},
                 "sourceIPs": [source] if source else [], "userAgent": user_agent}
        if impersonated is not None:
            event["impersonatedUser"] = impersonated.info()
        if attrs is not None and attrs.resource_request:
            ref = {"resource": attrs.resource}
            for key, value in (("namespace", attrs.namespace), ("name", attrs.name),
                               ("apiGroup", attrs.api_group), ("subresource", attrs.subresource)):
                if value:
                    ref[key] = value
            event["objectRef"] = ref
        event["responseStatus"] = {"metadata": {}, "message": message, "code": code} if message else \
            {"metadata": {}, "code": code}
        event["requestReceivedTimestamp"] = received
        event["stageTimestamp"] = _now()
        self.file.write(json.dumps(event, separators=(",", ":")) + "\n")
        return event


now = _now
