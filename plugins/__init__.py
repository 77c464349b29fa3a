"""Plugins bundled with k3p. Each subpackage is registered in the ``k3p.plugins`` entry-point group."""
