"""The ServiceAccounts controller: every namespace has a ServiceAccount named
``default`` (pods that name none run as it), made again if deleted, as
kube-controller-manager's serviceaccount controller does. Namespaces being
deleted are left alone."""

from __future__ import annotations

import logging

from apiserver.errors import ApiError
from apiserver.pb import serviceaccount_pb2
from controllers.base import Controller

log = logging.getLogger("controllers.serviceaccounts")

DEFAULT_NAME = "default"


class ServiceAccountsController(Controller):
    name = "serviceaccounts"

    def __init__(self, client, informers, *, workers: int = 1) -> None:
        """``informers``: a SharedInformerFactory (namespaces, serviceaccounts)."""
        self.client = client
        self.namespaces = informers.informer("namespaces")
        self.accounts = informers.informer("serviceaccounts")
        super().__init__([self.namespaces, self.accounts], workers)
        self.namespaces.add_handler(self._namespace, lambda old, new: self._namespace(new), None)
        self.accounts.add_handler(None, None, self._account_deleted)

    def _namespace(self, ns) -> None:
        self.queue.add(ns.metadata.name)

    def _account_deleted(self, sa) -> None:
        if sa.metadata.name == DEFAULT_NAME:
            self.queue.add(sa.metadata.namespace)

    def sync(self, namespace: str) -> None:
        ns = self.namespaces.store.get(namespace)
        if ns is None or ns.metadata.deletion_timestamp or ns.status.phase == "Terminating":
            return
        if self.accounts.store.get(f"{namespace}/{DEFAULT_NAME}") is not None:
            return
        sa = serviceaccount_pb2.ServiceAccount()
        sa.metadata.name = DEFAULT_NAME
        sa.metadata.namespace = namespace
        try:
            self.client.create(sa)
            log.info("created ServiceAccount %s/%s", namespace, DEFAULT_NAME)
        except ApiError as e:
            if e.reason == "AlreadyExists":
                return
            if e.reason == "Forbidden" and "being terminated" in e.message:
                return
            raise
