"""Reading back the GIFs a run recorded, as a viewer plays them."""

from __future__ import annotations

import io

import numpy as np


def played_frames(data: bytes) -> tuple[list[np.ndarray], int]:
    """(the frames as played, the frame delay in ms). Pillow merges identical consecutive frames into
    one of their summed duration, so each stored frame is repeated by its share of the play time, in
    units of the shortest delay."""
    from PIL import Image

    gif = Image.open(io.BytesIO(data))
    shown = []
    for k in range(gif.n_frames):
        gif.seek(k)
        shown.append((np.asarray(gif.convert("RGB")), gif.info["duration"]))
    unit = min(d for _, d in shown)
    return [f for f, d in shown for _ in range(round(d / unit))], unit
