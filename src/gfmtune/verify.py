"""File verification against a published size and ``"algo:hex"`` digest (md5 or sha256)."""

from __future__ import annotations

import hashlib
from pathlib import Path

DIGEST_ALGORITHMS = ("md5", "sha256")


def parse_digest(digest: str) -> tuple[str, str]:
    """Split ``"md5:abc..."`` into ``("md5", "abc...")``; only md5 and sha256 are accepted."""
    algo, sep, value = digest.partition(":")
    algo, value = algo.strip().lower(), value.strip().lower()
    if not sep or algo not in DIGEST_ALGORITHMS or not value:
        raise ValueError(f"digest {digest!r} is not 'md5:<hex>' or 'sha256:<hex>'")
    return algo, value


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algo).hexdigest()


def mismatch(path: Path, size: int | None, digest: str | None) -> str | None:
    """What differs between ``path`` and ``size``/``digest`` (expected and actual values), or None
    when it matches; a file with neither to check against does not match."""
    if size is None and digest is None:
        return "no size or digest to verify it against"
    problems = []
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        problems.append(f"size mismatch, expected {size} bytes, got {actual_size}")
    if digest is not None:
        algo, expected = parse_digest(digest)
        actual = file_digest(path, algo)
        if actual != expected:
            problems.append(f"{algo} mismatch, expected {expected}, got {actual}")
    return "; ".join(problems) or None
