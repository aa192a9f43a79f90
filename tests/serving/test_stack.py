"""The server stack: uvloop and httptools when installed (pinned dependencies), uvicorn's own defaults otherwise."""

from __future__ import annotations

import pytest

from creditflow.serving import stack


def test_uvloop_and_httptools_or_uvicorns_defaults_for_the_missing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert stack.stack() == ("uvloop", "httptools")
    installed = stack.find_spec
    monkeypatch.setattr(stack, "find_spec", lambda name: None if name == "uvloop" else installed(name))
    assert stack.stack() == ("asyncio", "httptools")
    monkeypatch.setattr(stack, "find_spec", lambda name: None)
    assert stack.stack() == ("asyncio", "h11")
