"""The endpoint's Redis connection: replies read as redis-py reads them, in order, and every failure one line."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from creditflow.serving.resp import ReplyError, RespClient, RespError, encode, parse_reply
from tests.conftest import ON_REDIS, REDIS

REPLIES = [  # (wire bytes, value)
    (b"+OK\r\n", b"OK"),
    (b"-ERR unknown command\r\n", "ERR unknown command"),
    (b":-42\r\n", -42),
    (b"$-1\r\n", None),
    (b"$0\r\n\r\n", b""),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
    (b"*3\r\n$1\r\nx\r\n$-1\r\n*2\r\n:1\r\n$2\r\nyz\r\n", [b"x", None, [1, b"yz"]]),
    (b"*0\r\n", []),
]


@pytest.mark.parametrize(("wire", "value"), REPLIES)
def test_a_reply_is_read_whole_and_no_cut_of_it_is_taken_for_a_reply(wire: bytes, value: object) -> None:
    buffer = b"noise" + wire + b"+NEXT\r\n"
    parsed, end = parse_reply(buffer, 5)
    assert (str(parsed) if isinstance(parsed, ReplyError) else parsed) == value
    assert buffer[end:] == b"+NEXT\r\n"
    assert all(parse_reply(b"noise" + wire[:cut], 5) is None for cut in range(len(wire)))


def test_a_reply_of_an_unknown_kind_is_an_error_and_commands_are_arrays_of_bulk_strings() -> None:
    with pytest.raises(RespError, match="not a Redis reply"):
        parse_reply(b"HTTP/1.1 200 OK\r\n", 0)
    assert encode("MGET", b"k\r\n1", "é") == b"*3\r\n$4\r\nMGET\r\n$4\r\nk\r\n1\r\n$2\r\n\xc3\xa9\r\n"


def test_an_unreachable_server_is_one_line() -> None:
    async def read() -> None:
        await RespClient("redis://127.0.0.1:1/0", connect_timeout=2, timeout=5).command("PING")

    with pytest.raises(RespError, match=r"^cannot connect: \[Errno 111\] Connect call failed"):
        asyncio.run(read())


@pytest.fixture
def keys() -> Iterator[list[str]]:
    prefix, client = f"test-resp:{uuid.uuid4().hex}", redis.Redis.from_url(REDIS)
    names = [f"{prefix}:{i}" for i in range(300)]
    client.mset({name: f"value {i}\r\n{'x' * i}".encode() for i, name in enumerate(names)})
    yield names
    client.delete(*names)


@ON_REDIS
def test_mget_answers_as_redis_py_does_and_pipelined_commands_each_get_their_own(keys: list[str]) -> None:
    asked = [[keys[i], f"{keys[i]}-absent", keys[(i * 7) % 300]] for i in range(200)]

    async def read() -> list:
        client = RespClient(REDIS, connect_timeout=2, timeout=5)
        return await asyncio.gather(*(client.command("MGET", *names) for names in asked))

    expected = redis.Redis.from_url(REDIS)
    assert asyncio.run(read()) == [expected.mget(names) for names in asked]


@ON_REDIS
def test_the_url_selects_the_database_and_a_refused_login_is_one_line(keys: list[str]) -> None:
    other = REDIS.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(other).set(keys[0], b"in db 9")

    async def read(url: str) -> object:
        return await RespClient(url, connect_timeout=2, timeout=5).command("GET", keys[0])

    try:
        assert asyncio.run(read(other)) == b"in db 9" and asyncio.run(read(REDIS)).startswith(b"value 0")
        with pytest.raises(RespError, match="^AUTH refused: "):  # this Redis has no password set
            asyncio.run(read(REDIS.replace("redis://", "redis://:secret@")))
    finally:
        redis.Redis.from_url(other).delete(keys[0])


@ON_REDIS
def test_an_error_reply_fails_its_command_only(keys: list[str]) -> None:
    async def read() -> tuple:
        client = RespClient(REDIS, connect_timeout=2, timeout=5)
        return await asyncio.gather(client.command("GET", keys[1]), client.command("INCR", keys[1]),
                                    client.command("GET", keys[2]), return_exceptions=True)

    before, failed, after = asyncio.run(read())
    assert before == b"value 1\r\nx" and after == b"value 2\r\nxx"
    assert isinstance(failed, ReplyError) and str(failed).startswith("ERR value is not an integer")


@ON_REDIS
def test_an_unanswered_command_times_out_in_one_line_and_the_next_connects_again(keys: list[str]) -> None:
    admin = redis.Redis.from_url(REDIS)

    async def read() -> tuple:
        client = RespClient(REDIS, connect_timeout=2, timeout=0.3)
        await client.command("PING")
        admin.client_pause(1500, all=True)  # Redis holds every client's commands
        paused = time.monotonic()
        with pytest.raises(RespError, match=r"^no answer from Redis in 0.3 s"):
            await client.command("GET", keys[3])
        waited = time.monotonic() - paused
        admin.client_unpause()
        return waited, await client.command("GET", keys[3])

    waited, value = asyncio.run(read())
    assert waited < 1.2 and value == b"value 3\r\nxxx"


@ON_REDIS
def test_a_connection_the_server_closes_is_opened_again(keys: list[str]) -> None:
    admin = redis.Redis.from_url(REDIS)

    async def read() -> object:
        client = RespClient(REDIS, connect_timeout=2, timeout=5)
        admin.client_kill_filter(_id=await client.command("CLIENT", "ID"))
        deadline = time.monotonic() + 10
        while client._connection.lost is None and time.monotonic() < deadline:  # until the loop has seen it
            await asyncio.sleep(0.01)
        assert isinstance(client._connection.lost, RespError)
        return await client.command("GET", keys[4])

    assert asyncio.run(read()) == b"value 4\r\nxxxx"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Path]:
    """A Redis server of the test's own, on a Unix socket only, with a password."""
    socket = tmp_path / "redis.sock"
    server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(socket), "--requirepass", "pw",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not socket.exists() and server.poll() is None and time.monotonic() < deadline:  # until it listens
            time.sleep(0.01)
        assert socket.exists(), "redis-server did not start"
        yield socket
    finally:
        server.kill()
        server.wait()


def test_a_unix_socket_with_a_password_and_a_database(private_redis: Path) -> None:
    url = f"unix://default:pw@{private_redis}?db=2"
    redis.Redis.from_url(url).set("k", b"on the socket")

    async def read(url: str) -> object:
        return await RespClient(url, connect_timeout=2, timeout=5).command("MGET", "k", "absent")

    assert asyncio.run(read(url)) == [b"on the socket", None]
    with pytest.raises(RespError, match="^AUTH refused: WRONGPASS"):
        asyncio.run(read(url.replace(":pw@", ":nope@")))
