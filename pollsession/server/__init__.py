"""The asyncio layer of the server: it moves bytes and wakes tasks, over :mod:`pollsession.protocol`.

* ``handler``: ``HttpHandler``, the framework-neutral entry every adapter calls.
* ``loop``: the event-loop thread (or the framework's own loop) the sessions run on.
* ``registry``: the sessions of one target, their tasks, expiry and shutdown.
* ``session``: ``Session``, the application's object: ``send`` waits, ``receive``, iteration, close.
* ``rooms``: named rooms and the broadcast rule.
* ``session_handler``: ``SessionHandler``, class-based targets.
"""

__all__: list[str] = []
