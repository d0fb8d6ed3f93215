"""Writes the landing corpus: one broken flights landing file per kind in
``pipelines.simulation.corruption.CORRUPTIONS``.

Each file is ``corrupt(kind, feed_csv("flights", 2013-01-02))``, written byte for byte (``wrong_encoding`` is
UTF-16, ``empty_file`` is 0 bytes). Run from the repository root after changing ``pipelines/simulation/corruption.py``:

    .venv/bin/python tests/data/landing_corpus/generate.py

``tests/data/test_landing_corpus.py`` fails while the committed files differ from what this would write.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pipelines.simulation.corruption import CORRUPTIONS, corrupt
from pipelines.simulation.feed import feed_csv

HERE = Path(__file__).resolve().parent
DAY = date(2013, 1, 2)
TABLE = "flights"


def build() -> dict[str, bytes]:
    """Kind -> the broken landing file's bytes, made from the real 2013-01-02 flights feed."""
    clean = feed_csv(TABLE, DAY)
    return {kind: corrupt(kind, clean) for kind in CORRUPTIONS}


def write(folder: Path = HERE) -> list[Path]:
    """Write every corpus file into ``folder`` (removing files of kinds that no longer exist); returns the paths."""
    corpus = build()
    for stale in folder.glob("*.csv"):
        if stale.stem not in corpus:
            stale.unlink()
    paths = []
    for kind, content in corpus.items():
        path = folder / f"{kind}.csv"
        path.write_bytes(content)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write():
        print(f"{written.name}: {written.stat().st_size} bytes")
