"""kctl: the command line of the control plane, shaped like kubectl.

    kctl apply -f controllers/kctl/examples/web.yaml
    kctl get deployments
    kctl rollout status deployment/web

It talks to the apiserver through ``apiserver.client.Client`` only. Modules:
``cli`` (flags, dispatch, exit codes), ``session`` (the client, namespace flags
and how errors print), ``kinds`` (resource names as kubectl reads and prints
them), ``manifests`` (YAML/JSON documents to typed objects), ``apply``
(apply, create, delete -f), ``get`` (tables, -o, watch), ``printers``
(kubectl's columns per kind), ``describe`` and ``layout``, ``rollout``,
``edits`` (delete by name, scale, cordon, set image).
"""

from controllers.kctl.cli import main

__all__ = ["main"]
