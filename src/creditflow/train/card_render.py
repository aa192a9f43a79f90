"""Plain blocks (headings, paragraphs, lists, tables) written as Markdown and as HTML, and the card's number formats.

The model card is built once as blocks, so its Markdown and its HTML (which the MLflow UI renders) say the same.
Text marks code with backticks, in both.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from typing import Literal

Kind = Literal["h1", "h2", "h3", "p", "ul", "table"]
Table = tuple[tuple[str, ...], list[tuple[str, ...]]]  # header, rows
Block = tuple[Kind, str | list[str] | Table]
NOT_AVAILABLE = "n/a"
STYLE = ("body{font-family:sans-serif;max-width:62em;margin:1.5em auto;line-height:1.4}"
         "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #bbb;padding:2px 8px;text-align:left}"
         "th{background:#eee}code{background:#f4f4f4}")


def fixed(value: float | None) -> str:
    """A metric as the card prints it: four decimals, n/a when it cannot be computed."""
    return NOT_AVAILABLE if value is None or math.isnan(value) else f"{value:.4f}"


def percent(value: float | None) -> str:
    """A rate as the card prints it: a percentage with two decimals."""
    return NOT_AVAILABLE if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def interval(bounds: tuple[float, float], fmt: Callable[[float], str] = fixed) -> str:
    """A bootstrap interval as `low to high`, in the format of its figure."""
    low, high = bounds
    return NOT_AVAILABLE if math.isnan(low) or math.isnan(high) else f"{fmt(low)} to {fmt(high)}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown."""
    out = []
    for kind, body in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {body}")
        elif kind == "p":
            out.append(str(body))
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in body))
        else:
            header, rows = body
            lines = [header, tuple("---" for _ in header), *rows]
            out.append("\n".join("| " + " | ".join(_md_cell(c) for c in line) + " |" for line in lines))
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escaped text, `code` as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def to_html(blocks: list[Block], title: str) -> str:
    """The blocks as one self-contained HTML page."""
    out = []
    for kind, body in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            out.append(f"<{kind}>{_inline(str(body))}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in body) + "</ul>")
        else:
            header, rows = body
            head = "".join(f"<th>{_inline(c)}</th>" for c in header)
            cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(out) + "\n</body></html>\n")
