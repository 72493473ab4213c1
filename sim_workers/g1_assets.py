"""Where the Unitree G1 MJCF lives: mjlab's asset zoo, found without importing mjlab.

Importing `mjlab` imports NVIDIA Warp; we only need its data files, so the package is located
with `importlib.util.find_spec` (install it with `pip install --no-deps mjlab==1.6.0`).
`policy_workers/backends/_g1_assets.py` holds the same few lines (the two packages never import
each other).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

G1_RELATIVE = Path("asset_zoo/robots/unitree_g1/xmls/g1.xml")


def g1_xml_path() -> Path:
    spec = importlib.util.find_spec("mjlab")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the Unitree G1 model comes from mjlab: pip install --no-deps mjlab==1.6.0")
    path = Path(spec.origin).parent / G1_RELATIVE
    if not path.is_file():
        raise FileNotFoundError(f"mjlab is installed but {path} is missing")
    return path
