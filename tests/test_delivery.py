"""The pure delivery core (``protocol.delivery.Delivery``), with plain calls: no loop, no sockets, no sleeps.

The unit tests pin each rule; the property tests drive one core from both
ends with random interleavings of sends, polls with stale acks and lost
answers, retried and partial pushes, reads and closes, and check that every
message arrives exactly once and in order both ways and that the close is
always seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollsession import BadRequest, InboxFull, MessageType, PayloadTooLarge, SessionClosed, UnknownSession
from pollsession.protocol.delivery import Delivery, PollAction, check_close
from pollsession.protocol.messages import Outgoing, Packed, encode_outgoing
from pollsession.protocol.wire import Closed


def core(inbox: int = 4, outbox: int = 2, *, inbox_bytes: int = 1 << 20, outbox_bytes: int = 1 << 20) -> Delivery:
    return Delivery(inbox_limit=inbox, outbox_limit=outbox, max_message_size=1000,
                    max_inbox_bytes=inbox_bytes, max_outbox_bytes=outbox_bytes)


def out(value: Any) -> Outgoing:
    return encode_outgoing(value, 1000)


def packed(seq: int, text: str) -> tuple[int, Packed]:
    return seq, Packed(MessageType.TEXT, text.encode())


def answer(delivery: Delivery) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(b"".join(delivery.answer()))
    return document


# -- sending and backpressure ---------------------------------------------------


def test_sends_are_numbered_from_one_and_resent_until_acknowledged() -> None:
    delivery = core(outbox=8)
    assert [delivery.send(out(v)) for v in ("a", "b", "c")] == [1, 2, 3]
    assert [m["seq"] for m in answer(delivery)["messages"]] == [1, 2, 3]
    assert [m["seq"] for m in answer(delivery)["messages"]] == [1, 2, 3]  # a lost answer is repeated whole
    delivery.acknowledge(2)
    assert answer(delivery)["messages"] == [{"seq": 3, "type": "text", "data": "c"}]
    delivery.acknowledge(1)  # a stale ack changes nothing
    assert (delivery.acked, delivery.unacknowledged) == (2, 1)


def test_an_ack_beyond_what_was_sent_is_400_and_changes_nothing() -> None:
    delivery = core()
    delivery.send(out("a"))
    with pytest.raises(BadRequest) as refused:
        delivery.acknowledge(2)
    assert refused.value.code == "bad_ack"
    assert (delivery.acked, delivery.unacknowledged) == (0, 1)


def test_a_full_outbox_queues_tickets_served_fifo_as_acks_free_room() -> None:
    delivery = core(outbox=2)
    delivery.send(out("1"))
    delivery.send(out("2"))
    assert delivery.send(out("3")) is None
    first = delivery.wait_for_room(len(out("3").fragment))
    second = delivery.wait_for_room(len(out("4").fragment))
    assert delivery.send(out("late")) is None  # nobody jumps the queue
    assert delivery.acknowledge(1) == [first]
    assert delivery.offer(out("broadcast")) is False  # the freed room is reserved for the first ticket
    assert delivery.claim(first, out("3")) == 3
    assert delivery.acknowledge(3) == [second]
    assert delivery.claim(second, out("4")) == 4


def test_a_withdrawn_ticket_passes_its_room_to_the_next() -> None:
    delivery = core(outbox=1)
    delivery.send(out("1"))
    gone = delivery.wait_for_room(10)
    waiting = delivery.wait_for_room(10)
    assert delivery.acknowledge(1) == [gone]
    assert delivery.withdraw(gone) == [waiting]
    assert delivery.claim(waiting, out("2")) == 2


def test_closing_refuses_waiting_senders_and_later_sends() -> None:
    delivery = core(outbox=1)
    delivery.send(out("1"))
    ticket = delivery.wait_for_room(10)
    assert delivery.close(4000, "bye") == [ticket]
    assert delivery.close(1000) == []  # the first close wins
    assert delivery.closed == Closed(4000, "bye")
    with pytest.raises(SessionClosed):
        delivery.send(out("2"))
    with pytest.raises(SessionClosed):
        delivery.claim(ticket, out("2"))


def test_a_sender_granted_room_before_the_close_still_appends() -> None:
    delivery = core(outbox=1)
    delivery.send(out("1"))
    ticket = delivery.wait_for_room(10)
    assert delivery.acknowledge(1) == [ticket]
    delivery.close(1000)
    assert delivery.claim(ticket, out("2")) == 2  # it called send() before the close
    document = answer(delivery)
    assert [m["data"] for m in document["messages"]] == ["2"] and document["closed"]["code"] == 1000


def test_nobody_passes_a_sender_granted_room_that_has_not_appended_yet() -> None:
    delivery = core(outbox=2)
    delivery.send(out("1"))
    delivery.send(out("2"))
    ticket = delivery.wait_for_room(10)
    assert delivery.acknowledge(2) == [ticket]
    assert delivery.send(out("later")) is None  # there is room, but the granted sender came first
    assert delivery.claim(ticket, out("3")) == 3


def test_one_message_always_fits_an_empty_outbox_whatever_its_bytes() -> None:
    delivery = core(outbox=4, outbox_bytes=10)
    assert delivery.send(out("x" * 500)) == 1
    assert delivery.send(out("y")) is None


# -- polls ------------------------------------------------------------------


def test_what_a_poll_does() -> None:
    delivery = core()
    assert delivery.poll(25) is PollAction.HOLD
    assert delivery.poll(0) is PollAction.ANSWER  # wait=0 is a short poll
    delivery.send(out("a"))
    assert delivery.poll(25) is PollAction.ANSWER
    delivery.close(1000)
    assert delivery.poll(25) is PollAction.ANSWER  # the close is not told yet
    assert answer(delivery)["closed"] == {"code": 1000, "reason": ""}
    assert delivery.poll(25) is PollAction.ANSWER  # told, but seq 1 is not acknowledged
    delivery.acknowledge(1)
    assert delivery.finished()
    assert delivery.poll(25) is PollAction.FINAL


def test_a_newer_poll_supersedes_the_held_one() -> None:
    delivery = core()
    first, superseded = delivery.hold_poll()
    assert (superseded, delivery.held_poll) == (0, first)
    second, superseded = delivery.hold_poll()
    assert superseded == first and delivery.held_poll == second
    delivery.release_poll(first)  # the old poll's answer does not release the new one
    assert delivery.holds_poll
    assert delivery.supersede() == second and not delivery.holds_poll


# -- pushes -----------------------------------------------------------------


def test_pushes_are_deduplicated_and_gaps_refused() -> None:
    delivery = core(inbox=8)
    assert delivery.accept([packed(1, "a"), packed(2, "b")]).ack == 2
    repeat = delivery.accept([packed(1, "a"), packed(2, "b"), packed(3, "c")])
    assert (repeat.ack, repeat.complete, repeat.grew) == (3, True, True)
    with pytest.raises(BadRequest) as gap:
        delivery.accept([packed(5, "e")])
    assert gap.value.code == "seq_gap"
    assert [delivery.read().raw for _ in range(3)] == [b"a", b"b", b"c"]  # type: ignore[union-attr]
    assert delivery.read() is None


def test_a_full_inbox_takes_what_fits() -> None:
    delivery = core(inbox=2)
    accepted = delivery.accept([packed(1, "a"), packed(2, "b"), packed(3, "c")])
    assert (accepted.ack, accepted.complete) == (2, False)


def test_an_oversized_new_message_is_413_and_a_repeated_one_is_ignored() -> None:
    delivery = core()
    big = Packed(MessageType.TEXT, b"x" * 1001)
    with pytest.raises(PayloadTooLarge):
        delivery.accept([(1, big)])
    delivery.accept([packed(1, "a")])
    assert delivery.accept([(1, big), packed(2, "b")]).ack == 2


def test_a_push_to_a_closed_session_is_410_with_the_close() -> None:
    delivery = core()
    delivery.close(4001, "done")
    with pytest.raises(UnknownSession) as gone:
        delivery.accept([packed(1, "a")])
    assert (gone.value.code, gone.value.closed) == ("session_closed", Closed(4001, "done"))


def test_a_push_checks_the_close_then_the_requests_refusal_then_the_inbox() -> None:
    delivery = core(inbox=1)
    refusal = BadRequest("bad body")
    with pytest.raises(BadRequest):
        delivery.push([packed(1, "a")], refused=refusal, retry_after=1)
    assert delivery.received == 0
    with pytest.raises(InboxFull) as full:
        delivery.push([packed(1, "a"), packed(2, "b")], refused=None, retry_after=3)
    assert (full.value.ack, full.value.retry_after, delivery.received) == (1, 3, 1)
    delivery.close(1000)
    with pytest.raises(UnknownSession):  # 410 wins over the request's own refusal
        delivery.push([packed(2, "b")], refused=refusal, retry_after=1)


def test_close_codes_and_reasons_are_checked() -> None:
    for code in (1000, 1001, 1008, 1011, 3000, 4999):
        check_close(code, "")
    for code, reason in ((1006, ""), (2999, ""), (5000, ""), (1000, "x" * 124), (True, "")):
        with pytest.raises(ValueError):
            check_close(code, reason)  # type: ignore[arg-type]


# -- both ends at once (hypothesis) -----------------------------------------------


@dataclass
class Client:
    """A model client obeying docs/protocol.md, with a lossy network."""

    values: list[str]
    ack: int = 0  # highest server seq received contiguously
    received: list[Any] = field(default_factory=list)
    pushed_ack: int = 0  # what the server acknowledged of our messages
    closed: dict[str, Any] | None = None

    def take(self, document: dict[str, Any]) -> None:
        for message in document["messages"]:
            if message["seq"] == self.ack + 1:
                self.ack += 1
                self.received.append(message["data"])
        if document["closed"] is not None:
            self.closed = document["closed"]


@dataclass
class Server:
    """The application's side: ``send`` calls in order, some waiting for room, and what it read."""

    to_send: list[str]
    called: list[str] = field(default_factory=list)  # every send() call, in order
    dropped: set[str] = field(default_factory=set)  # cancelled, or refused by the close
    waiting: list[tuple[int, str]] = field(default_factory=list)
    granted: list[tuple[int, str]] = field(default_factory=list)  # woken, not yet run
    read: list[str] = field(default_factory=list)

    def grant(self, tickets: list[int]) -> None:
        for ticket in tickets:  # the asyncio layer wakes them in this order, and they run in it
            index = next(i for i, (t, _) in enumerate(self.waiting) if t == ticket)
            self.granted.append(self.waiting.pop(index))

    def run_granted(self, delivery: Delivery) -> None:
        for ticket, value in self.granted:
            delivery.claim(ticket, out(value))
        self.granted.clear()

    def expected(self) -> list[str]:
        return [value for value in self.called if value not in self.dropped]


operations = st.lists(
    st.tuples(st.sampled_from(["send", "poll", "push", "read", "run", "cancel", "hold", "close"]),
              st.integers(0, 5), st.booleans()),
    max_size=100,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(1, 4), st.integers(1, 4))
def test_random_interleavings_deliver_exactly_once_in_order_and_the_close_is_seen(
    steps: list[tuple[str, int, bool]], outbox: int, inbox: int
) -> None:
    delivery = core(inbox=inbox, outbox=outbox)
    server = Server([f"s{i}" for i in range(30)])
    client = Client([f"c{i}" for i in range(30)])
    for kind, number, lost in steps:
        if kind == "send" and server.to_send and delivery.closed is None:
            value = server.to_send.pop(0)
            server.called.append(value)
            if delivery.send(out(value)) is None:
                server.waiting.append((delivery.wait_for_room(len(out(value).fragment)), value))
        elif kind == "poll":
            stale = max(0, client.ack - number)  # an old ack from a retried poll is harmless
            server.grant(delivery.acknowledge(stale if lost else client.ack))
            if delivery.poll(0 if number % 2 else 25) is not PollAction.HOLD:
                delivery.supersede()
                document = json.loads(b"".join(delivery.answer()))
                if not lost:  # a lost answer: the client never sees it
                    client.take(document)
        elif kind == "hold":  # a poll held, then superseded by a newer one or answered at its end
            held, _ = delivery.hold_poll()
            if lost:
                delivery.hold_poll()
            delivery.release_poll(held)
        elif kind == "run":  # the woken senders get to run (after a close too)
            server.run_granted(delivery)
        elif kind == "cancel" and (server.waiting or server.granted):
            queue = server.granted if lost and server.granted else server.waiting or server.granted
            ticket, value = queue.pop(number % len(queue))
            server.dropped.add(value)  # its send() raised CancelledError
            server.grant(delivery.withdraw(ticket))
        elif kind == "push" and delivery.closed is None:
            start = max(1, client.pushed_ack + 1 - number)  # retries repeat messages already held
            end = min(len(client.values), client.pushed_ack + 1 + number)
            batch = [packed(seq, client.values[seq - 1]) for seq in range(start, end + 1)]
            accepted = delivery.accept(batch)
            if not lost:
                client.pushed_ack = max(client.pushed_ack, accepted.ack)
        elif kind == "read":
            for _ in range(number):
                message = delivery.read()
                if message is not None:
                    server.read.append(message.raw.decode())
        elif kind == "close" and number == 0:
            refused = delivery.close(4000, "done")
            server.dropped.update(value for ticket, value in server.waiting if ticket in refused)
            server.waiting.clear()  # their sends raised SessionClosed
    refused = delivery.close(4000, "done")
    server.dropped.update(value for ticket, value in server.waiting if ticket in refused)
    server.waiting.clear()
    server.run_granted(delivery)
    # Drain: the client polls with its real ack until the server can forget the session.
    for _ in range(len(server.called) + 3):
        delivery.acknowledge(client.ack)
        action = delivery.poll(25)
        client.take(json.loads(b"".join(delivery.answer())))
        if action is PollAction.FINAL:
            break
    while (message := delivery.read()) is not None:
        server.read.append(message.raw.decode())
    assert client.received == server.expected()  # server to client: exactly once, in the order of send()
    assert server.read == client.values[: delivery.received]  # client to server: exactly once, in order
    assert client.pushed_ack <= delivery.received
    assert client.closed == {"code": 4000, "reason": "done"}
    delivery.acknowledge(client.ack)
    assert delivery.finished()
