"""The cluster's controllers (what kube-controller-manager runs), each a level-triggered reconcile loop.

Every controller reads the cluster through shared informers and writes through the API, like
any other client; :func:`k3p.controllers.manager.controller_manager_component` runs them all
inside ``k3p server``.
"""

from k3p.controllers.base import ControllerOptions
from k3p.controllers.manager import CONTROLLERS, ControllerManager, controller_manager_component

__all__ = ["CONTROLLERS", "ControllerManager", "ControllerOptions", "controller_manager_component"]
