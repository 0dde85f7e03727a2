"""Objects to the JSON the REST API answers with: manifest.to_dict, with
IntOrString values that are numbers written as JSON numbers, as Kubernetes
writes them (our protos keep IntOrString as text, so ``targetPort: 80`` would
come back as "80", and ``kubectl apply`` would see a change that is not one).
"""

from __future__ import annotations

from apiserver import manifest

# JSON names of IntOrString fields; "port" only under a probe handler
_INT_OR_STRING = {"targetPort", "maxSurge", "maxUnavailable"}
_PORT_PARENTS = {"httpGet", "tcpSocket"}


def _fix(value, parent: str = "") -> None:
    if isinstance(value, dict):
        for key, v in value.items():
            if isinstance(v, str) and v.isdigit() and v.isascii() and (
                    key in _INT_OR_STRING or (key == "port" and parent in _PORT_PARENTS)):
                value[key] = int(v)
            elif isinstance(v, (dict, list)):
                _fix(v, key)
    elif isinstance(value, list):
        for v in value:
            _fix(v, parent)


def to_json(msg) -> dict:
    """The object as Kubernetes JSON (apiVersion and kind first)."""
    out = manifest.to_dict(msg)
    _fix(out)
    return out
