"""The online endpoint's reads of the feature store: Redis commands on one pipelined connection, as an asyncio protocol.

redis-py's asyncio client takes a pooled connection, a lock and a retry wrapper for each command: several times the
CPU of the round trip itself for the one-key MGET a request by id sends (docs/performance.md). Here a command is
written to the connection at once, its reply matched to it in order (RESP2, Redis's wire protocol), and a command
that gets no answer within the timeout closes the connection, failing every command still waiting; the next one
connects again. URLs are read as redis-py reads them (redis://, rediss://, unix://; user, password, db).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

from creditflow.errors import CreditflowError


class RespError(CreditflowError):
    """An error reply, a lost or unreachable connection, or a command not answered in time."""


class ReplyError(RespError):
    """Redis answered the command with an error (it stays connected)."""


Reply = bytes | int | list[Any] | ReplyError | None


def parse_reply(buffer: bytes | bytearray, start: int) -> tuple[Reply, int] | None:
    """The reply beginning at `start` and the position after it; None while the buffer does not hold all of it."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        return None
    kind, line, position = buffer[start], bytes(buffer[start + 1:end]), end + 2
    if kind == 0x2B:  # + simple string
        return line, position
    if kind == 0x2D:  # - error
        return ReplyError(line.decode("utf-8", "replace")), position
    if kind == 0x3A:  # : integer
        return int(line), position
    if kind == 0x24:  # $ bulk string, $-1 nil
        size = int(line)
        if size < 0:
            return None, position
        if len(buffer) < position + size + 2:
            return None
        return bytes(buffer[position:position + size]), position + size + 2
    if kind == 0x2A:  # * array, *-1 nil
        count, items = int(line), []
        for _ in range(count):
            parsed = parse_reply(buffer, position)
            if parsed is None:
                return None
            items.append(parsed[0])
            position = parsed[1]
        return (items if count >= 0 else None), position
    raise RespError(f"not a Redis reply (it begins with {bytes([kind])!r})")


def encode(*args: str | bytes) -> bytes:
    """A command as RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One connection: commands written as they come, each reply resolving the oldest waiting command."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: deque[asyncio.Future] = deque()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, command: bytes) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(command)  # type: ignore[union-attr]
        return future

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        position = 0
        try:
            while self.waiting and (parsed := parse_reply(self.buffer, position)) is not None:
                reply, position = parsed
                future = self.waiting.popleft()
                if future.done():  # its caller gave up (timeout): the connection is being closed
                    continue
                if isinstance(reply, ReplyError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (RespError, ValueError) as exc:  # out of step with the server: nothing after can be trusted
            self.close(RespError(f"unreadable reply from Redis: {exc}"))
            return
        del self.buffer[:position]

    def connection_lost(self, exc: BaseException | None) -> None:
        self.close(RespError(f"connection lost ({exc or 'closed by the server'})"))

    def close(self, reason: BaseException) -> None:
        """Fail every waiting command with `reason`; the connection is not used again."""
        self.lost = self.lost or reason
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(reason)
        if self.transport is not None:
            self.transport.close()


class RespClient:
    """Commands to one Redis server from one event loop (the loop it is first used in)."""

    def __init__(self, url: str, connect_timeout: float, timeout: float):
        from redis.connection import parse_url

        self.options, self.url = parse_url(url), url  # ValueError for a URL redis-py would refuse
        self.connect_timeout, self.timeout = connect_timeout, timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()  # commands waiting for the connection

    async def command(self, *args: str | bytes) -> Reply:
        """A command's reply; RespError if Redis cannot be reached or does not answer in time, ReplyError if it
        answers with an error."""
        return await self.send(*args)

    def send(self, *args: str | bytes) -> asyncio.Future:
        """The command's reply to come (`command`), written at once when connected: no task, no await."""
        connection = self._connection
        if connection is None or connection.lost is not None:
            sending = asyncio.ensure_future(self._send_connected(args))
            self._sending.add(sending)  # a reference until it is done (the loop keeps only a weak one)
            sending.add_done_callback(self._sending.discard)
            return sending
        return self._timed(connection, connection.send(encode(*args)))

    async def _send_connected(self, args: tuple[str | bytes, ...]) -> Reply:
        connection = await self._connected()
        return await self._timed(connection, connection.send(encode(*args)))

    def _timed(self, connection: _Connection, reply: asyncio.Future) -> asyncio.Future:
        """`reply`, the connection closed if it has not come within the timeout."""
        late = asyncio.get_running_loop().call_later(
            self.timeout, connection.close, RespError(f"no answer from Redis in {self.timeout:g} s"))
        reply.add_done_callback(lambda _: late.cancel())
        return reply

    async def _connected(self) -> _Connection:
        attempt = self._connecting
        if attempt is None:  # callers arriving meanwhile wait for the same attempt
            attempt = self._connecting = asyncio.ensure_future(self._connect())
            attempt.add_done_callback(lambda _: setattr(self, "_connecting", None))
        self._connection = await asyncio.shield(attempt)
        return self._connection

    async def _connect(self) -> _Connection:
        loop, options = asyncio.get_running_loop(), self.options
        try:
            if "path" in options:
                opened = loop.create_unix_connection(_Connection, options["path"])
            else:
                secure = ssl.create_default_context() if "SSL" in getattr(
                    options.get("connection_class"), "__name__", "") else None
                opened = loop.create_connection(_Connection, options.get("host", "localhost"),
                                                options.get("port", 6379), ssl=secure)
            _, connection = await asyncio.wait_for(opened, self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise RespError(f"cannot connect: {exc or 'timed out'}") from None
        hello = [("AUTH", *([options["username"]] if options.get("username") else []), options["password"])
                 if options.get("password") else None, ("SELECT", str(options["db"])) if options.get("db") else None]
        for args in filter(None, hello):
            try:
                await self._timed(connection, connection.send(encode(*args)))
            except ReplyError as exc:
                connection.close(exc)
                raise RespError(f"{args[0]} refused: {exc}") from None
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close(RespError("closed"))
