"""The ingress controller: keeps the proxy's routing table and the Ingresses' status current.

Informers on Ingresses, IngressClasses, Services, EndpointSlices, TLS Secrets and Nodes.
Any change that can move a route schedules one rebuild of the whole table shortly after
(changes arriving together are coalesced); the new table replaces the old one in the proxy
in one step. Every node runs this controller and computes the same load-balancer status
for each served Ingress (the InternalIPs of the Ready nodes), writing it through the
``status`` subresource only when it differs, so the nodes agree without electing a leader.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from k3p.client import ApiError, Client, InformerFactory, Obj, split_key
from k3p.client.resources import ENDPOINTSLICES, INGRESSCLASSES, INGRESSES, NODES, SECRETS, SERVICES
from k3p.supervisor import Ready, TaskComponent
from k3p_plugins.traefik.proxy import IngressProxy
from k3p_plugins.traefik.routes import SERVICE_NAME_LABEL, TLS_SECRET_TYPE, RoutingTable, build_routing_table

log = structlog.get_logger(__name__)

FIELD_MANAGER = "k3p-traefik"


def node_is_ready(node: Obj) -> bool:
    """Whether the Node's Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def load_balancer_ips(nodes: Iterable[Obj]) -> list[str]:
    """The InternalIPs of the Ready nodes, sorted: what every served Ingress reports as its address."""
    ips = {a["address"] for n in nodes if node_is_ready(n)
           for a in (n.get("status") or {}).get("addresses") or []
           if a.get("type") == "InternalIP" and a.get("address")}
    return sorted(ips)


def _node_address_state(node: Obj | None) -> tuple[bool, tuple[str, ...]]:
    if node is None:
        return False, ()
    addresses = (node.get("status") or {}).get("addresses") or []
    return node_is_ready(node), tuple(a.get("address", "") for a in addresses if a.get("type") == "InternalIP")


def load_balancer_status(ips: list[str]) -> list[dict[str, Any]]:
    """``status.loadBalancer.ingress`` for these addresses."""
    return [{"ip": ip} for ip in ips]


class IngressController:
    """Feeds ``proxy`` with routing tables built from the cluster seen through ``client``.

    ``debounce`` is how long a rebuild waits for more changes; ``write_status`` turns the
    Ingress status updates off (e.g. for a proxy that is not reachable at the nodes' IPs).
    The controller reports ready once its listeners are open, or after ``bind_grace``
    seconds if a port cannot be bound (then it keeps retrying and logs an error).
    """

    def __init__(self, client: Client, proxy: IngressProxy, *, debounce: float = 0.05,
                 write_status: bool = True, resync: float = 30.0, bind_grace: float = 2.0) -> None:
        self.client = client
        self.proxy = proxy
        self.bind_grace = bind_grace
        self.debounce = debounce
        self.resync = resync
        self.write_status = write_status
        self.factory = InformerFactory(client)
        self.ingresses = self.factory.informer(INGRESSES)
        self.classes = self.factory.informer(INGRESSCLASSES)
        self.services = self.factory.informer(SERVICES)
        self.slices = self.factory.informer(ENDPOINTSLICES)
        # only TLS Secrets: the others (tokens, credentials) are none of the proxy's business
        self.secrets = self.factory.informer(SECRETS, field_selector=f"type={TLS_SECRET_TYPE}")
        self.nodes = self.factory.informer(NODES)
        self._changed = asyncio.Event()
        self._routes_changed = True
        self._problems: tuple[str, ...] = ()
        self._table_services: frozenset[tuple[str, str]] = frozenset()
        #: how many tables this controller has built (for tests and debugging)
        self.generation = 0

    # --- change detection ------------------------------------------------------------------

    def _on_change(self, _type: str, _obj: Obj, _old: Obj | None) -> None:
        self._routes_changed = True
        self._changed.set()

    # Services and EndpointSlices that no served Ingress names cannot move a route (a new
    # Ingress naming one rebuilds anyway): in a busy cluster most changes are of this kind.

    def _on_service(self, type_: str, obj: Obj, old: Obj | None) -> None:
        meta = obj.get("metadata") or {}
        if (meta.get("namespace"), meta.get("name")) in self._table_services:
            self._on_change(type_, obj, old)

    def _on_slice(self, type_: str, obj: Obj, old: Obj | None) -> None:
        meta = obj.get("metadata") or {}
        if (meta.get("namespace"), (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)) in self._table_services:
            self._on_change(type_, obj, old)

    def _on_ingress(self, type_: str, obj: Obj, old: Obj | None) -> None:
        # our own status writes come back as MODIFIED events: they move no route
        if type_ == "MODIFIED" and old is not None and obj.get("spec") == old.get("spec") and (
                (obj.get("metadata") or {}).get("annotations") == (old.get("metadata") or {}).get("annotations")):
            self._changed.set()  # the status may have been changed by someone: check it
            return
        self._on_change(type_, obj, old)

    def _on_node(self, type_: str, obj: Obj, old: Obj | None) -> None:
        # Node status updates arrive all the time; only readiness and InternalIPs matter here
        if type_ != "MODIFIED" or _node_address_state(obj) != _node_address_state(old):
            self._changed.set()

    # --- running ---------------------------------------------------------------------------

    def rebuild(self) -> RoutingTable:
        """Build a table from the informers' current objects and hand it to the proxy."""
        table = build_routing_table(self.ingresses.items(), self.classes.items(), self.services.items(),
                                    self.slices.items(), self.secrets.items())
        self.proxy.set_table(table)
        self._table_services = table.services
        self.generation += 1
        if table.problems != self._problems:
            for problem in table.problems:
                if problem not in self._problems:
                    log.warning("ingress problem", component="traefik", problem=problem)
            self._problems = table.problems
        log.debug("routing table rebuilt", component="traefik", ingresses=len(table.ingresses),
                  hosts=len(table.hosts) + len(table.wildcards), generation=self.generation)
        return table

    async def sync_status(self, table: RoutingTable) -> None:
        """Write ``status.loadBalancer.ingress`` of each served Ingress that does not show the Ready nodes yet."""
        ips = load_balancer_ips(self.nodes.items())
        wanted = load_balancer_status(ips)
        for key in table.ingresses:
            ing = self.ingresses.get(key)
            if ing is None:
                continue
            current = ((ing.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            if current == wanted:
                continue
            namespace, name = split_key(key)
            try:
                await self.client.patch(INGRESSES, name, {"status": {"loadBalancer": {"ingress": wanted}}},
                                        namespace, subresource="status", field_manager=FIELD_MANAGER)
            except ApiError as e:
                if not e.not_found:
                    log.warning("cannot write ingress status", component="traefik", namespace=namespace,
                                name=name, error=str(e))

    async def run(self, ready: Ready | None = None, on_listening: Callable[[], Any] | None = None) -> None:
        """Sync, start the proxy's listeners, then follow changes until cancelled.

        ``on_listening`` is called once the listeners are open.
        """
        self.ingresses.add_listener(self._on_ingress)
        for informer in (self.classes, self.secrets):
            informer.add_listener(self._on_change)
        self.services.add_listener(self._on_service)
        self.slices.add_listener(self._on_slice)
        self.nodes.add_listener(self._on_node)
        self.factory.start()
        listening = None
        try:
            await self.factory.wait_synced()
            table = self.rebuild()
            self._routes_changed = False
            # listen only once the routes are known: no 404s for routes that exist
            listening = asyncio.create_task(self._listen(on_listening))
            await asyncio.wait([listening], timeout=self.bind_grace)
            # An add-on whose port is taken must not hold back the node (k3p is ready only when
            # every component is): it keeps trying in the background and says why in the log.
            if ready is not None:
                ready()
            while True:
                if self.write_status:
                    await self.sync_status(table)
                # also wake up now and then, so a status write that failed is tried again
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.resync):
                        await self._changed.wait()
                await asyncio.sleep(self.debounce)
                self._changed.clear()
                if self._routes_changed:
                    self._routes_changed = False
                    table = self.rebuild()
        finally:
            if listening is not None:
                listening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listening
            with contextlib.suppress(Exception):
                await self.factory.stop()
            await self.proxy.close()

    async def _listen(self, on_listening: Callable[[], Any] | None) -> None:
        delay = 1.0
        while True:
            try:
                await self.proxy.start()
            except OSError as e:
                log.error("ingress proxy cannot listen; retrying (choose other ports with --traefik-http-port "
                          "and --traefik-https-port, or --disable traefik)", component="traefik",
                          host=self.proxy.host, error=str(e), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if on_listening is not None:
                on_listening()
            return


def ingress_component(
    client_factory: Callable[[], Client],
    node_name: str,
    http_port: int | None = 80,
    https_port: int | None = 443,
    host: str = "0.0.0.0",
    *,
    write_status: bool = True,
    proxy_options: dict[str, Any] | None = None,
) -> TaskComponent:
    """The ``traefik-<node>`` component: the ingress proxy and its controller on one node.

    ``client_factory`` makes the API client (called at every (re)start of the component).
    """

    async def run(ready: Ready) -> None:
        client = client_factory()
        try:
            proxy = IngressProxy(http_port, https_port, host, **(proxy_options or {}))
            await IngressController(client, proxy, write_status=write_status).run(ready)
        finally:
            await client.close()

    return TaskComponent(f"traefik-{node_name}", run)
