"""The node side of k3p: node registration and lease, the kubelet, and the Runtime protocol."""
