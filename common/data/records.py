"""The record every reader returns and every consumer (pipeline, evaluation, index) reads.

A record is one ground/aerial pair of a split. Paths are absolute. ``polar`` is the path where the
prepared polar aerial lives (it may not exist yet: ``experiments.prepare`` writes it). ``position`` is the
pair's location in metres (CVACT: UTM easting, northing from ``ACT_data.mat``; CVUSA: the synthetic world's
coordinates table when present, else None).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PairRecord:
    id: str
    ground: str
    aerial: str
    polar: str
    position: Optional[tuple] = None  # (easting, northing) in metres, or None
    # Where the prepared (cropped/resized) ground image lives for layouts that need one (CVACT), else None.
    ground_prepared: Optional[str] = None


def positions_array(records: Sequence[PairRecord]) -> Optional[np.ndarray]:
    """(N, 2) float64 positions, or None when any record lacks one."""
    if not records or any(r.position is None for r in records):
        return None
    return np.asarray([r.position for r in records], dtype=np.float64)
