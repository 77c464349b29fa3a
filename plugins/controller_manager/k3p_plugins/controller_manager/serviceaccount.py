"""Every namespace gets a ``default`` ServiceAccount and the ``kube-root-ca.crt`` ConfigMap."""

from __future__ import annotations

from k3p.client import ApiError, Obj
from k3p.client.objects import is_deleting, meta
from k3p.client.resources import CONFIGMAPS, NAMESPACES, SERVICEACCOUNTS
from k3p_plugins.controller_manager.base import BaseController

ROOT_CA_CONFIGMAP = "kube-root-ca.crt"
ROOT_CA_DESCRIPTION = (
    "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the "
    "internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of "
    "Kubernetes clusters."
)


class ServiceAccountController(BaseController):
    """Creates the ``default`` ServiceAccount in each active namespace (and again if it is deleted)."""

    name = "serviceaccount"
    component = "service-account-controller"
    accounts = ("default",)

    def setup(self) -> None:
        self.namespaces = self.informers.informer(NAMESPACES)
        self.serviceaccounts = self.informers.informer(SERVICEACCOUNTS)
        self.watch_objects(self.namespaces)
        self.serviceaccounts.add_listener(self._on_sa)

    def _on_sa(self, type_: str, sa: Obj, _old: Obj | None) -> None:
        if type_ == "DELETED" and meta(sa).get("name") in self.accounts:
            self.queue.add(meta(sa)["namespace"])

    async def reconcile(self, key: str) -> None:
        ns = self.namespaces.get(key)
        if ns is None or is_deleting(ns) or (ns.get("status") or {}).get("phase") == "Terminating":
            return
        for name in self.accounts:
            if self.serviceaccounts.get(f"{key}/{name}") is not None:
                continue
            try:
                await self.client.create(SERVICEACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                                           "metadata": {"name": name, "namespace": key}}, key)
            except ApiError as e:
                # AlreadyExists: the cache lagged; Forbidden/NotFound: the namespace is going away
                if not (e.already_exists or e.not_found or e.status == 403):
                    raise


class RootCACertPublisher(BaseController):
    """Publishes the cluster CA as the ``kube-root-ca.crt`` ConfigMap (``ca.crt``) in every namespace."""

    name = "root-ca-cert-publisher"
    component = "root-ca-cert-publisher"

    def setup(self) -> None:
        self.namespaces = self.informers.informer(NAMESPACES)
        self.configmaps = self.informers.informer(CONFIGMAPS, field_selector=f"metadata.name={ROOT_CA_CONFIGMAP}")
        self.watch_objects(self.namespaces)
        self.configmaps.add_listener(lambda _t, cm, _o: self.queue.add(meta(cm)["namespace"]))

    async def reconcile(self, key: str) -> None:
        ca = self.options.root_ca_pem
        ns = self.namespaces.get(key)
        if not ca or ns is None or is_deleting(ns):
            return
        wanted = {"ca.crt": ca}
        annotations = {"kubernetes.io/description": ROOT_CA_DESCRIPTION}
        current = self.configmaps.get(f"{key}/{ROOT_CA_CONFIGMAP}")
        try:
            if current is None:
                await self.client.create(CONFIGMAPS, {
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CA_CONFIGMAP, "namespace": key, "annotations": annotations},
                    "data": wanted}, key)
            elif current.get("data") != wanted or (meta(current).get("annotations") or {}).get(
                    "kubernetes.io/description") != ROOT_CA_DESCRIPTION:
                await self.client.patch(CONFIGMAPS, ROOT_CA_CONFIGMAP, {
                    "metadata": {"annotations": annotations}, "data": wanted}, key)
        except ApiError as e:
            if not (e.already_exists or e.not_found or e.status == 403):
                raise
