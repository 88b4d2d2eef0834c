"""Where per-video files live in a cache folder: one folder per video path, one file per version of the video.

The frame cache and the face-box store both key a video's file by its path (hashed into a folder name)
and by its size and mtime (in the file name), so a video rewritten in place gets a new file and never
a stale one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from harness.errors import DataError

__all__ = ["video_folder", "stamped_entry"]


def video_folder(root: Path, video: str) -> Path:
    """The folder under `root` that holds every version of `video`'s file."""
    return Path(root) / hashlib.sha1(os.path.abspath(video).encode()).hexdigest()[:20]


def stamped_entry(root: Path, video: str, suffix: str, purpose: str) -> Path:
    """`<root>/<hash of the path>/<file size>-<mtime ns><suffix>` for the video as it is now on disk.

    `purpose` ends the error for a missing video: "{video} must exist to {purpose}, but: ...".
    """
    try:
        st = os.stat(video)
    except OSError as error:
        raise DataError(f"{video} must exist to {purpose}, but: {error.strerror}") from None
    # A frame folder's mtime changes when images are added or removed; its size is not meaningful.
    size = 0 if os.path.isdir(video) else st.st_size
    return video_folder(root, video) / f"{size}-{st.st_mtime_ns}{suffix}"
