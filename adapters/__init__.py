"""Framework adapters, installed as ``pollsession.adapters``.

Each adapter only translates its framework's request into an
``HttpContext`` and writes the ``HttpResponse`` the core returns; all
protocol logic lives in the core. Importing an adapter imports its framework.
"""

__all__: list[str] = []
