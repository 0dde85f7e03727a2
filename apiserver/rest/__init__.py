"""Kubernetes' HTTP/JSON API over the registry, served on the gRPC port
(issue 21). One idea a module:

- ``http1``: HTTP/1.1 connections (grpclite hands over those that are not HTTP/2)
- ``routing``: a REST path to (resource, namespace, name, subresource)
- ``api``: verbs to registry calls; bodies, DeleteOptions, dryRun, fieldValidation, scale
- ``discovery``: /version, /api, /apis, resource lists, aggregated discovery v2
- ``patch``: JSON merge patch, JSON patch, strategic merge patch
- ``apply``: server-side apply's options and every write's field manager
  (the semantics: apiserver/fieldmanager.py over apiserver/fieldpath.py)
- ``watch``: watch events as a chunked JSON stream
- ``tables``: meta.k8s.io Tables with kubectl's columns
- ``status``: errors as meta/v1 Status
- ``openapi``: the OpenAPI documents (not yet)
- ``streams``: pods/log, and pods/exec, attach, portforward relayed to the kubelet
- ``proxyrelay``: a proxy subresource's request relayed and its answer streamed back
- ``nodeproxy``: nodes/NAME/proxy to the node's kubelet
- ``podproxy``: pods/ and services/NAME/proxy to a pod's IP (apiserver/podnetwork.py dials it)
- ``metricsapi``: metrics.k8s.io/v1beta1 (kubectl top) from the kubelets (apiserver/resourcemetrics/)
- ``serving``: the pieces put together for apiserver/server.py
"""
