"""The context-manager API: hosts, networks, endpoints and sandboxes.

One module per object (:mod:`~cnm.api.host`, :mod:`~cnm.api.network`,
:mod:`~cnm.api.endpoint`, :mod:`~cnm.api.sandbox`, :mod:`~cnm.api.isolated`),
the protocols that span them in modules of their own (:mod:`~cnm.api.join`,
:mod:`~cnm.api.routing`, :mod:`~cnm.api.teardown`, :mod:`~cnm.api.bulk`,
:mod:`~cnm.api.views`, :mod:`~cnm.api.modes`), several hosts on one
underlay in :mod:`~cnm.api.lab`, and what children share of their host in
:mod:`cnm.api._services`, with the records of every object in
:mod:`cnm.api._records`.
"""

from .bulk import SandboxRequest
from .endpoint import Endpoint
from .host import Host
from .isolated import Outside
from .lab import Lab
from .network import Network
from .sandbox import Sandbox

__all__ = ["Endpoint", "Host", "Lab", "Network", "Outside", "Sandbox", "SandboxRequest"]
