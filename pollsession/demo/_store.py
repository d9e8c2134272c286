"""Where the demo chat keeps what all its workers must agree on.

Two things are shared by every process that serves one chat: who is in which
room (a nickname is free or taken across all workers, and every member list
shows everyone), and who pushes each clock tick (one worker per tick, or every
session would hear the time once per worker). :class:`LocalStore` keeps both
in this process (one worker, nothing installed); :class:`RedisStore` keeps
them in Redis, beside the sessions of a
:class:`~pollsession.backends.redis.RedisBackend`.

Every method runs on the handler's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from typing import Any

__all__ = ["ChatStore", "LocalStore", "RedisStore"]

logger = logging.getLogger("pollsession.demo")


class ChatStore:
    """The chat's shared state: room members and clock ticks. Subclasses keep it somewhere."""

    async def claim(self, room: str, sid: str, nick: str) -> bool:
        """Make ``nick`` a member of ``room`` for session ``sid``; False if it is taken (ignoring case)."""
        raise NotImplementedError

    async def release(self, room: str, sid: str, nick: str) -> None:
        """Free ``nick`` in ``room``, if ``sid`` holds it."""
        raise NotImplementedError

    async def members(self, room: str) -> list[str]:
        """The nicknames in ``room``, sorted ignoring case."""
        raise NotImplementedError

    async def take_tick(self, slot: int) -> bool:
        """True for exactly one caller per clock ``slot`` among every worker of the chat."""
        raise NotImplementedError

    async def run(self) -> None:
        """Keep this worker's claims alive until cancelled (nothing to do in one process)."""

    async def aclose(self) -> None:
        """Let go of what the store holds open."""


def _sorted(nicks: list[str]) -> list[str]:
    return sorted(nicks, key=str.casefold)


class LocalStore(ChatStore):
    """Members and ticks in this process: the demo's default, for one worker."""

    def __init__(self) -> None:
        # room -> folded nickname -> (session id, nickname)
        self._rooms: dict[str, dict[str, tuple[str, str]]] = {}

    async def claim(self, room: str, sid: str, nick: str) -> bool:
        members = self._rooms.setdefault(room, {})
        if nick.casefold() in members:
            return False
        members[nick.casefold()] = (sid, nick)
        return True

    async def release(self, room: str, sid: str, nick: str) -> None:
        members = self._rooms.get(room, {})
        if members.get(nick.casefold(), ("",))[0] == sid:
            del members[nick.casefold()]
        if not members:
            self._rooms.pop(room, None)

    async def members(self, room: str) -> list[str]:
        return _sorted([nick for _, nick in self._rooms.get(room, {}).values()])

    async def take_tick(self, slot: int) -> bool:
        return True


# A room is one hash: folded nickname -> JSON [worker, session id, nickname].
# A claim made by a worker whose alive key has expired (it was killed) is
# dropped by the next script that reads the room.
_PRUNE = """
local entries = redis.call('HGETALL', KEYS[1])
local nicks = {}
for i = 1, #entries, 2 do
  local entry = cjson.decode(entries[i + 1])
  if redis.call('EXISTS', ARGV[1] .. entry[1]) == 1 then
    table.insert(nicks, entry[3])
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
"""

_MEMBERS_SCRIPT = _PRUNE + "return nicks\n"

_CLAIM_SCRIPT = _PRUNE + """
if redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

_RELEASE_SCRIPT = """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if entry and cjson.decode(entry)[2] == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


class RedisStore(ChatStore):
    """Members and ticks in Redis, for a chat served by many workers.

    Keys, under ``name`` (the deployment's name, as for ``RedisBackend``):
    ``{name}:demo:room:{room}`` (a hash of the room's members, deleted when
    its last member leaves, else expiring ``room_ttl`` after this worker's
    last refresh), ``{name}:demo:worker:{id}`` (this worker is alive: expires
    ``alive_ttl`` after the worker stops refreshing it, which drops its
    members everywhere) and ``{name}:demo:tick:{slot}`` (who took a tick;
    expires after two slots). Nothing outlives the last worker by more than
    ``room_ttl``. The scripts read keys they are not given, so this store
    needs a single Redis server, not a Redis Cluster.
    """

    def __init__(self, url: str, *, name: str = "pollsession-demo", clock_interval: float = 5.0,
                 alive_ttl: float = 10.0, room_ttl: float = 60.0) -> None:
        import redis.asyncio

        self._redis: Any = redis.asyncio.Redis.from_url(url)
        self._name = name
        self._worker = secrets.token_urlsafe(6)
        self._tick_ms = max(1, int(2000 * clock_interval))
        self._alive_ms = int(alive_ttl * 1000)
        self._room_ms = int(room_ttl * 1000)
        self._rooms: dict[str, int] = {}  # the rooms this worker has members in -> how many

    def _room(self, room: str) -> str:
        return f"{self._name}:demo:room:{room}"

    def _alive_prefix(self) -> str:
        return f"{self._name}:demo:worker:"

    async def _stay_alive(self) -> None:
        await self._redis.set(self._alive_prefix() + self._worker, b"1", px=self._alive_ms)

    async def claim(self, room: str, sid: str, nick: str) -> bool:
        if not self._rooms:  # the first claim: be alive before it counts
            await self._stay_alive()
        entry = json.dumps([self._worker, sid, nick])
        claimed = await self._redis.eval(_CLAIM_SCRIPT, 1, self._room(room), self._alive_prefix(),
                                         nick.casefold(), entry, self._room_ms)
        if claimed:
            self._rooms[room] = self._rooms.get(room, 0) + 1
        return bool(claimed)

    async def release(self, room: str, sid: str, nick: str) -> None:
        count = self._rooms.pop(room, 0) - 1
        if count > 0:
            self._rooms[room] = count
        await self._redis.eval(_RELEASE_SCRIPT, 1, self._room(room), nick.casefold(), sid)

    async def members(self, room: str) -> list[str]:
        nicks = await self._redis.eval(_MEMBERS_SCRIPT, 1, self._room(room), self._alive_prefix())
        return _sorted([nick.decode() if isinstance(nick, bytes) else str(nick) for nick in nicks])

    async def take_tick(self, slot: int) -> bool:
        return bool(await self._redis.set(f"{self._name}:demo:tick:{slot}", self._worker, nx=True, px=self._tick_ms))

    async def run(self) -> None:
        """Refresh this worker's alive key and its rooms' expiry, three times per ``alive_ttl``."""
        while True:
            await asyncio.sleep(self._alive_ms / 3000)
            if not self._rooms:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.set(self._alive_prefix() + self._worker, b"1", px=self._alive_ms)
                    for room in self._rooms:
                        pipe.pexpire(self._room(room), self._room_ms)
                    await pipe.execute()
            except Exception as exc:  # Redis away: the next round tries again
                logger.warning("pollsession demo: cannot refresh the chat's members in Redis (%s)", exc)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):  # our members are gone already; the key would expire anyway
            await self._redis.delete(self._alive_prefix() + self._worker)
        await self._redis.aclose()
