"""The Kubernetes API server of k3p."""
