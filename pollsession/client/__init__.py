"""The Python clients of pollsession.

* :class:`Client` (``sync``): a session from a threaded Python program, on :mod:`requests`.
* ``state``: the client's reliability rules as plain objects (what to send
  again, what to drop, how to read each answer, how long to back off), shared
  by every client and held to ``tests/vectors/client`` like the browser client.

``from pollsession.client import Client`` is the public import.
"""

from .sync import ABNORMAL_CLOSURE, Client

__all__ = ["Client", "ABNORMAL_CLOSURE"]
