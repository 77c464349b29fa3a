"""The resource types k3p's own components use, named once."""

from __future__ import annotations

from k3p.client.api import Resource

NAMESPACES = Resource("", "v1", "namespaces", False, "Namespace")
NODES = Resource("", "v1", "nodes", False, "Node")
PODS = Resource("", "v1", "pods", True, "Pod")
SERVICES = Resource("", "v1", "services", True, "Service")
ENDPOINTS = Resource("", "v1", "endpoints", True, "Endpoints")
CONFIGMAPS = Resource("", "v1", "configmaps", True, "ConfigMap")
SECRETS = Resource("", "v1", "secrets", True, "Secret")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", True, "ServiceAccount")
EVENTS = Resource("", "v1", "events", True, "Event")
PERSISTENTVOLUMECLAIMS = Resource("", "v1", "persistentvolumeclaims", True, "PersistentVolumeClaim")
PERSISTENTVOLUMES = Resource("", "v1", "persistentvolumes", False, "PersistentVolume")
REPLICATIONCONTROLLERS = Resource("", "v1", "replicationcontrollers", True, "ReplicationController")
DEPLOYMENTS = Resource("apps", "v1", "deployments", True, "Deployment")
REPLICASETS = Resource("apps", "v1", "replicasets", True, "ReplicaSet")
DAEMONSETS = Resource("apps", "v1", "daemonsets", True, "DaemonSet")
STATEFULSETS = Resource("apps", "v1", "statefulsets", True, "StatefulSet")
CONTROLLERREVISIONS = Resource("apps", "v1", "controllerrevisions", True, "ControllerRevision")
JOBS = Resource("batch", "v1", "jobs", True, "Job")
CRONJOBS = Resource("batch", "v1", "cronjobs", True, "CronJob")
LEASES = Resource("coordination.k8s.io", "v1", "leases", True, "Lease")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", True, "EndpointSlice")
EVENTS_V1 = Resource("events.k8s.io", "v1", "events", True, "Event")
INGRESSES = Resource("networking.k8s.io", "v1", "ingresses", True, "Ingress")
INGRESSCLASSES = Resource("networking.k8s.io", "v1", "ingressclasses", False, "IngressClass")
PODDISRUPTIONBUDGETS = Resource("policy", "v1", "poddisruptionbudgets", True, "PodDisruptionBudget")
PRIORITYCLASSES = Resource("scheduling.k8s.io", "v1", "priorityclasses", False, "PriorityClass")
STORAGECLASSES = Resource("storage.k8s.io", "v1", "storageclasses", False, "StorageClass")
CLUSTERROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", False, "ClusterRole")
CLUSTERROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings", False, "ClusterRoleBinding")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", True, "Role")
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", True, "RoleBinding")
CUSTOMRESOURCEDEFINITIONS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", False,
                                     "CustomResourceDefinition")

#: by (apiVersion, kind), for following ownerReferences; other kinds (custom resources) are
#: found through discovery: ``Client.resource_for``
BY_KIND = {
    (r.api_version, r.kind): r
    for r in (NAMESPACES, NODES, PODS, SERVICES, ENDPOINTS, CONFIGMAPS, SECRETS, SERVICEACCOUNTS,
              PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, REPLICATIONCONTROLLERS, DEPLOYMENTS, REPLICASETS,
              DAEMONSETS, STATEFULSETS, CONTROLLERREVISIONS, JOBS, CRONJOBS, LEASES, ENDPOINTSLICES, INGRESSES,
              INGRESSCLASSES, PODDISRUPTIONBUDGETS, PRIORITYCLASSES, STORAGECLASSES, CLUSTERROLES,
              CLUSTERROLEBINDINGS, ROLES, ROLEBINDINGS, CUSTOMRESOURCEDEFINITIONS)
}
