"""What workers say to each other: forwarded operations and their answers, as bytes. No I/O.

A frame is a compact JSON header, a NUL byte, then the payload (a push's
messages or an answer's body, byte for byte)::

    {"k":"op","id":"...","reply":"...","path":"/poll","op":"poll","sid":"...","ack":3,"wait":null}\\0
    {"k":"push",...,"batch":[[seq,"text",length],...]}\\0<raw of every message, concatenated>
    {"k":"answer","id":"...","status":200,"headers":[[name,value],...],"routine":false}\\0<body>
    {"k":"cancel","id":"..."}\\0
    {"k":"batch","sizes":[n1,n2,...]}\\0<frame 1><frame 2>...

A batch carries several frames for one worker in one Redis message: what a
worker publishes to another within one turn of its loop (the answers to a
broadcast's forwarded polls, above all) costs one PUBLISH and one read.

An operation travels already checked and parsed by the worker that received
it (``protocol.requests``): the owner applies it to the session exactly as if
the request had reached it, including a refusal found while parsing
(``error``), which the owner raises once it knows the session exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..protocol.errors import HttpError, error_for_status
from ..protocol.http import HttpResponse
from ..protocol.messages import Outgoing, Packed
from ..protocol.requests import Delete, Poll, Push
from ..protocol.wire import Closed, MessageType

__all__ = ["Forwarded", "SendTo", "Cancel", "Answer", "Broadcast", "Batch", "encode_operation", "encode_send",
           "encode_cancel", "encode_answer", "encode_broadcast", "encode_batch", "decode", "decode_closed",
           "FrameError"]


class FrameError(ValueError):
    """Bytes that are not a frame of this module (another version, or corruption)."""


@dataclass(frozen=True, slots=True)
class Forwarded:
    """An operation forwarded to this worker, and where to send its answer."""

    id: str
    reply: str
    path: str
    operation: Poll | Push | Delete


@dataclass(frozen=True, slots=True)
class SendTo:
    """``HttpHandler.send_to`` for a session of this worker, and where to answer."""

    id: str
    reply: str
    sid: str
    message: Outgoing


@dataclass(frozen=True, slots=True)
class Cancel:
    """The forwarding worker's client went away: release the operation ``id`` (a held poll)."""

    id: str


@dataclass(frozen=True, slots=True)
class Answer:
    """The owner's answer to the forwarded operation ``id``."""

    id: str
    response: HttpResponse


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A broadcast for every worker's members: its number, the message, the room and the excluded id."""

    number: int
    message: Outgoing
    room: str | None
    exclude: str | None


@dataclass(frozen=True, slots=True)
class Batch:
    """Several frames for one worker, in the order they were published (each still to be decoded)."""

    frames: tuple[bytes, ...]


def _frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    return json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\0" + payload


def _error_fields(error: HttpError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"status": error.status, "code": error.code, "message": error.message}


def encode_operation(request_id: str, reply: str, path: str, operation: Poll | Push | Delete) -> bytes:
    header: dict[str, Any] = {"k": "op", "id": request_id, "reply": reply, "path": path}
    if isinstance(operation, Poll):
        header.update(op="poll", sid=operation.sid, ack=operation.ack, wait=operation.wait,
                      error=_error_fields(operation.error))
        return _frame(header)
    if isinstance(operation, Push):
        header.update(op="push", sid=operation.sid, error=_error_fields(operation.error),
                      batch=[[seq, message.type.value, len(message.raw)] for seq, message in operation.batch])
        return _frame(header, b"".join(message.raw for _, message in operation.batch))
    header.update(op="delete", sid=operation.sid)
    return _frame(header)


def encode_send(request_id: str, reply: str, sid: str, message: Outgoing) -> bytes:
    return _frame({"k": "send", "id": request_id, "reply": reply, "sid": sid, "type": message.type.value,
                   "size": message.size}, message.fragment)


def encode_cancel(request_id: str) -> bytes:
    return _frame({"k": "cancel", "id": request_id})


def encode_answer(request_id: str, response: HttpResponse) -> bytes:
    return _frame({"k": "answer", "id": request_id, "status": response.status,
                   "headers": [list(pair) for pair in response.headers], "routine": response.routine},
                  response.body)


def encode_broadcast(message: Outgoing, room: str | None, exclude: str | None) -> bytes:
    """A broadcast frame without its number (``{"k":...``); the publisher splices ``"n":N,`` in after the brace."""
    return _frame({"k": "bcast", "type": message.type.value, "size": message.size, "room": room,
                   "exclude": exclude}, message.fragment)


def encode_batch(frames: list[bytes]) -> bytes:
    """One frame carrying ``frames`` (each a frame of this module, not a batch), in order."""
    return _frame({"k": "batch", "sizes": [len(frame) for frame in frames]}, b"".join(frames))


def decode_closed(body: bytes) -> Closed:
    """The ``closed`` of an error body the owner answered (a 410): its close, else 1006."""
    try:
        closed = json.loads(body)["closed"]
        return Closed(int(closed["code"]), str(closed["reason"]))
    except (ValueError, KeyError, TypeError):
        return Closed(1006, "")


def _error(fields: Any) -> HttpError | None:
    if fields is None:
        return None
    return error_for_status(int(fields["status"]), str(fields["message"]), str(fields["code"]))


def decode(frame: bytes) -> Forwarded | SendTo | Cancel | Answer | Broadcast | Batch:
    """The frame's value; :class:`FrameError` for anything else."""
    head, sep, payload = frame.partition(b"\0")
    try:
        if not sep:
            raise ValueError("no header")
        header = json.loads(head)
        kind = header["k"]
        if kind == "answer":
            headers = [(str(name), str(value)) for name, value in header["headers"]]
            return Answer(header["id"], HttpResponse(int(header["status"]), headers, payload,
                                                     routine=bool(header["routine"])))
        if kind == "cancel":
            return Cancel(header["id"])
        if kind == "batch":
            frames, offset = [], 0
            for size in header["sizes"]:
                frames.append(payload[offset:offset + int(size)])
                offset += int(size)
            if offset != len(payload):
                raise ValueError("the payload does not match the batch")
            return Batch(tuple(frames))
        if kind == "send":
            return SendTo(header["id"], header["reply"], header["sid"],
                          Outgoing(MessageType(header["type"]), payload, int(header["size"])))
        if kind == "bcast":
            message = Outgoing(MessageType(header["type"]), payload, int(header["size"]))
            return Broadcast(int(header["n"]), message, header["room"], header["exclude"])
        if kind != "op":
            raise ValueError(f"unknown frame kind {kind!r}")
        op = header["op"]
        operation: Poll | Push | Delete
        if op == "poll":
            wait = header["wait"]
            operation = Poll(header["sid"], int(header["ack"]), None if wait is None else float(wait),
                             _error(header["error"]))
        elif op == "push":
            batch: list[tuple[int, Packed]] = []
            offset = 0
            for seq, type_, length in header["batch"]:
                batch.append((int(seq), Packed(MessageType(type_), payload[offset:offset + length])))
                offset += length
            if offset != len(payload):
                raise ValueError("the payload does not match the batch")
            operation = Push(header["sid"], batch, _error(header["error"]))
        elif op == "delete":
            operation = Delete(header["sid"])
        else:
            raise ValueError(f"unknown operation {op!r}")
        return Forwarded(header["id"], header["reply"], header["path"], operation)
    except (ValueError, KeyError, TypeError) as exc:
        raise FrameError(f"not a pollsession frame: {exc}") from None
