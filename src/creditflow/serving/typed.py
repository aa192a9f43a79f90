"""What a scoring request is typed as: the model's raw matrix (`Applicants`), a frame, or a segmented deployment's
rows (`RoutedRows`); and frames built from 2-D blocks by pandas' own block manager.

`serving.requests` types a request into one of these; the coalescer stacks them, `Loaded.columns` scores them, and
the shadow reads their frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from pandas._libs.internals import BlockPlacement
from pandas.core.internals.blocks import new_block_2d
from pandas.core.internals.managers import BlockManager


@dataclass(frozen=True)
class RoutedRows:
    """A segmented deployment's applicants: the columns the models read, and apart from them each row's segment
    value (text or None). Nothing is dropped before scoring and the frame stays one float block."""

    frame: pd.DataFrame
    segments: list[str | None]

    def __len__(self) -> int:
        return len(self.frame)


class Applicants:
    """A request of numbers for a spec without categorical columns, typed as the model's raw matrix (the spec's
    columns in its order, NaN missing): what the model scores with no frame in between (`Loaded.columns`). `frame`
    makes one for those that read frames (the shadow model)."""

    __slots__ = ("matrix", "columns")

    def __init__(self, matrix: np.ndarray, columns: pd.Index):
        self.matrix, self.columns = matrix, columns  # columns: one Index per spec (`Coalescer` groups by it)

    def __len__(self) -> int:
        return len(self.matrix)

    @property
    def frame(self) -> pd.DataFrame:
        return float_frame(self.matrix, self.columns)


Parsed = pd.DataFrame | RoutedRows | Applicants  # what a scoring request is typed as


def frame_of(parsed: pd.DataFrame | Applicants) -> pd.DataFrame:
    """The rows as a frame, whichever way they were typed."""
    return parsed.frame if isinstance(parsed, Applicants) else parsed


def float_frame(block: np.ndarray, columns: pd.Index) -> pd.DataFrame:
    """A frame of one float64 block (rows x columns), a view of it."""
    return blocks_frame([(block, slice(0, block.shape[1]))], columns)


def blocks_frame(parts: list[tuple[np.ndarray, list[int] | slice]], columns: pd.Index) -> pd.DataFrame:
    """A frame of 2-D arrays (rows x their columns), each column placed where its position says, built by pandas'
    own block manager (pandas pinned): the public constructors re-check and re-infer what the parse settled (the
    dict ones infer pandas 3's string dtype for texts), two to ten times a one-applicant parse (docs/performance.md);
    tests/serving/test_requests.py holds the frames equal to the public construction."""
    blocks = tuple(new_block_2d(values.T, BlockPlacement(at)) for values, at in parts)
    manager = BlockManager(blocks, [columns, _row_index(len(parts[0][0]))], verify_integrity=False)
    return pd.DataFrame._from_mgr(manager, axes=manager.axes)


def stacked_blocks(frames: list[pd.DataFrame]) -> pd.DataFrame | None:
    """Frames of the same 2-D blocks in the same places (parsed requests of one column list: a float block and an
    object block) as one frame, rows in order: each block's arrays concatenated, the frame built once. pandas'
    concat re-plans the blocks for every frame, about ten times the cost (docs/performance.md). None when the
    frames' blocks differ."""
    first = frames[0]._mgr.blocks
    if any(len(f._mgr.blocks) != len(first) for f in frames):
        return None
    parts = []
    for k, block in enumerate(first):
        same = [f._mgr.blocks[k] for f in frames]
        places = block.mgr_locs.as_array
        where = places.tobytes()  # compared as bytes: np.array_equal costs more than the rest of a small stack
        if not isinstance(block.values, np.ndarray) or block.values.ndim != 2 or any(
                b.dtype != block.dtype or b.mgr_locs.as_array.tobytes() != where for b in same):
            return None
        parts.append((np.concatenate([b.values for b in same], axis=1).T, places))
    return blocks_frame(parts, frames[0].columns)


@lru_cache(maxsize=256)
def _row_index(rows: int) -> pd.RangeIndex:
    """Row labels 0..rows-1, made once per length (immutable, so frames may share one)."""
    return pd.RangeIndex(rows)


@lru_cache(maxsize=64)
def column_index(columns: tuple[str, ...]) -> pd.Index:
    """The frame's column labels, built once per column list (an Index of text costs more than a small frame's
    data; Indexes are immutable, so frames may share one). Object dtype: pandas 3's inferred string Index costs
    ~7 us to list its labels, as the model does on every call."""
    return pd.Index(columns, dtype=object)
