"""One way to write a file all at once: checkpoints, shard files and manifests, downloads, evaluation results.

`atomic_write` fills a temporary file beside the target (`.NAME.tmp-XXXXXXXX`, so a folder's leftovers of a
killed writer match `.*.tmp-*`), flushes and fsyncs it, then renames it over the target: a reader sees the old
file or the new one, never a half-written one. On any error the temporary file is removed and the target is
untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def atomic_write(path: Path, write: Callable[[IO], None], *, text: bool = False) -> None:
    """Write `path` through `write(f)` (a binary file, or UTF-8 text with `text=True`), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
