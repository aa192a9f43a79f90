"""The stream scorer's Redis commands: a batch's state read in one pipeline, its results written in one transaction.

Per-applicant and per-event work is done by three short Lua scripts, so a batch of 100 events costs a handful of
commands instead of several hundred: redis-py packs each command's arguments in Python, and that, not Redis, was
most of a batch's time (docs/performance.md, "Stream scorer: three round trips a batch").
"""

from __future__ import annotations

import json
from typing import Any

SUMS = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
"""  # KEYS: applicants' sums; returns each one's column, amount, ...
APPLY = """
local at = 2
for i = 1, #KEYS, 2 do
  local n = tonumber(ARGV[at])
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    for j = at + 1, at + 2 * n, 2 do redis.call('HINCRBYFLOAT', KEYS[i + 1], ARGV[j], ARGV[j + 1]) end
  end
  at = at + 1 + 2 * n
end
return 1
"""  # KEYS: per event its applied-marker, its applicant's sums; ARGV: marker TTL, then per event n, n column, amount
PUBLISH = """
for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', unpack(cjson.decode(ARGV[i]))) end
return #ARGV
"""  # KEYS: a stream; ARGV: its new entries, each a JSON list field, value, ...: one short argument per entry

Amounts = dict[str, float]  # raw column -> amount added


def queue_sums(pipe: Any, keys: list[str]) -> None:
    """Queue the read of these sums hashes (`sums` decodes the reply)."""
    pipe.eval(SUMS, len(keys), *keys)


def sums(reply: list[list[Any]]) -> list[Amounts]:
    """`queue_sums`'s reply: per hash, {column: amount}."""
    return [{text(flat[i]): float(flat[i + 1]) for i in range(0, len(flat), 2)} for flat in reply]


def queue_apply(pipe: Any, ttl_seconds: int, applies: list[tuple[str, str, Amounts]]) -> None:
    """Queue adding each (applied-marker, sums key, amounts) in order, each only if its marker was not set yet."""
    if not applies:
        return
    keys: list[str] = []
    args: list[Any] = [ttl_seconds]
    for marker, key, amounts in applies:
        keys += [marker, key]
        args += [len(amounts), *[x for pair in amounts.items() for x in pair]]
    pipe.eval(APPLY, len(keys), *keys, *args)


def queue_publish(pipe: Any, stream: str, entries: list[dict[str, str]]) -> None:
    """Queue adding `entries` to `stream`, in order (one XADD each, run by the script)."""
    if entries:
        pipe.eval(PUBLISH, 1, stream, *[json.dumps([x for pair in e.items() for x in pair]) for e in entries])


def text(value: Any) -> str:
    """A Redis reply's bytes as text (UnicodeDecodeError when they are not UTF-8)."""
    return value.decode() if isinstance(value, bytes) else str(value)
