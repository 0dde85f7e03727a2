"""What one request may make the apiserver hold or walk.

Kubernetes' own limits where Python can afford them, lower ones where parsing
or walking a client's input runs on the event loop every client shares (each
says why). The object size limit is a flag (``--max-object-bytes``, under
etcd's request limit); the gRPC message limit is the server's.
"""

from __future__ import annotations

from apiserver import errors

# kube-apiserver's limit on a request body (its MaxRequestBodyBytes, 3 MiB)
MAX_REQUEST_BYTES = 3 * 1024 * 1024

# Kubernetes' JSON decoding stops at 10000 levels, more than a Python stack
# holds (json.loads itself gives up near 1000); the deepest path of our kinds
# is under 20 levels, so 100 refuses no object and keeps every walk shallow
MAX_JSON_DEPTH = 100

# The longest selector string a request may carry. kube-apiserver takes
# selectors in the URL, whose request line and headers Go's HTTP server caps at
# 1 MiB; parsing here runs at Python's speed on the event loop every client
# shares, so a megabyte of requirements would stall them all, and real
# selectors are well under 1 KiB.
MAX_SELECTOR_LENGTH = 64 * 1024


def check_request_size(size: int) -> None:
    """RequestEntityTooLarge, as kube-apiserver words it, for a body over MAX_REQUEST_BYTES."""
    if size > MAX_REQUEST_BYTES:
        raise errors.too_large(f"Request entity too large: limit is {MAX_REQUEST_BYTES}")
