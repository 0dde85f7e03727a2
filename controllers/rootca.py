"""The root CA publisher (kube-controller-manager's root-ca-cert-publisher): every namespace
has a ConfigMap ``kube-root-ca.crt`` whose ``ca.crt`` is the cluster's CA (``--root-ca-file``),
so that a pod's projected ServiceAccount volume can carry the certificate it checks the
apiserver with. Made again if deleted, put back if changed; namespaces being deleted are
left alone."""

from __future__ import annotations

import logging

from apiserver.errors import ApiError
from apiserver.pb import core_pb2
from controllers.base import Controller

log = logging.getLogger("controllers.rootca")

NAME = "kube-root-ca.crt"
KEY = "ca.crt"
DESCRIPTION = ("Contains a CA bundle that can be used to verify the kube-apiserver when using internal "
               "endpoints such as the internal service IP or kubernetes.default.svc. No other usage is "
               "guaranteed across distributions of Kubernetes clusters.")


class RootCAPublisher(Controller):
    name = "root-ca-cert-publisher"

    def __init__(self, client, informers, ca: str, *, workers: int = 1) -> None:
        """``ca``: the PEM text to publish; ``informers``: a SharedInformerFactory."""
        self.client = client
        self.ca = ca
        self.namespaces = informers.informer("namespaces")
        self.config_maps = informers.informer("configmaps")
        super().__init__([self.namespaces, self.config_maps], workers)
        self.namespaces.add_handler(self._namespace, lambda old, new: self._namespace(new), None)
        self.config_maps.add_handler(None, lambda old, new: self._config_map(new), self._config_map)

    def _namespace(self, ns) -> None:
        self.queue.add(ns.metadata.name)

    def _config_map(self, cm) -> None:
        if cm.metadata.name == NAME:
            self.queue.add(cm.metadata.namespace)

    def sync(self, namespace: str) -> None:
        ns = self.namespaces.store.get(namespace)
        if ns is None or ns.metadata.deletion_timestamp or ns.status.phase == "Terminating":
            return
        current = self.config_maps.store.get(f"{namespace}/{NAME}")
        if current is not None and dict(current.data) == {KEY: self.ca}:
            return
        try:
            if current is None:
                cm = core_pb2.ConfigMap()
                cm.metadata.name, cm.metadata.namespace = NAME, namespace
                cm.metadata.annotations["kubernetes.io/description"] = DESCRIPTION
                cm.data[KEY] = self.ca
                self.client.create(cm)
                log.info("published %s in %s", NAME, namespace)
            else:
                cm = core_pb2.ConfigMap()
                cm.CopyFrom(current)
                cm.data.clear()
                cm.binary_data.clear()
                cm.data[KEY] = self.ca
                self.client.update(cm)
        except ApiError as e:
            if e.reason in ("AlreadyExists", "Conflict", "NotFound"):
                self.queue.add_rate_limited(namespace)  # the informer had not seen the latest yet
                return
            if e.reason == "Forbidden" and "being terminated" in e.message:
                return
            raise
