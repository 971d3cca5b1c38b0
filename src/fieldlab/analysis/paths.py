"""Finding span files: what a user typed (files, directories, globs) as a sorted list of file paths."""

from __future__ import annotations

import glob as _glob
import os
from collections.abc import Sequence

from .model import SourceError

__all__ = ["SPAN_FILE_SUFFIXES", "expand_paths"]

#: The names a directory's span files end with (plain, gzip, zstd).
SPAN_FILE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz", ".json.zst", ".jsonl.zst")


def expand_paths(specs: Sequence[str]) -> list[str]:
    """Every file named by ``specs``: a file as is, a directory's span files (recursively), a glob's files;
    each group sorted. A spec that names nothing is a :class:`~.model.SourceError` that says what to pass."""
    files: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            found = sorted(
                os.path.join(root, f)
                for root, _, names in os.walk(spec)
                for f in names
                if f.endswith(SPAN_FILE_SUFFIXES)
            )
            if not found:
                raise SourceError(
                    f"{spec}: the directory holds no .json/.jsonl/.ndjson files (plain, .gz or .zst); "
                    "point at the file exporter's output directory or pass the files"
                )
            files.extend(found)
        elif any(ch in spec for ch in "*?["):
            found = sorted(p for p in _glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise SourceError(f"{spec}: the pattern matches no files; check the path or quote the glob")
            files.extend(found)
        elif os.path.isfile(spec):
            files.append(spec)
        else:
            raise SourceError(
                f"{spec}: no such file or directory; pass OTLP JSON-lines files, a directory, "
                "a glob, or a clickhouse:// URL"
            )
    return files
