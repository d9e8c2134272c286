"""Where sessions live when a deployment has more than one worker process.

The seam is :class:`pollsession.server.backend.Backend`; the in-process
``LocalBackend`` is the default and needs nothing. ``redis.RedisBackend``
(``pip install 'pollsession[redis]'``) lets any worker answer any request;
``frames`` is what workers say to each other.
"""

__all__: list[str] = []
