"""The contracts plugins implement, side by side.

- :mod:`k3p.protocols.datastore`: ``Datastore``, the one interface between the API server
  and any storage backend (returned by ``k3p_datastore``).
- :mod:`k3p.protocols.runtime`: ``Runtime``, what the kubelet needs from a container
  runtime (returned by ``k3p_runtime``).

Each module also holds the data types and typed errors of its protocol.
"""
