"""Fake HTTP servers on 127.0.0.1 (port 0) for the download tests, and dataset helpers.

:class:`FileServer` serves bytes with ``Range`` support and scripted faults, :class:`ZenodoServer`
adds a record's JSON, :class:`FakeHub` speaks the three Hugging Face endpoints that
``snapshot_download`` uses (docs/data.md, "Stage 1: data"), :class:`ModelHub` the one that
``hf_hub_download`` uses for a model repository's file. Every server records the requests it
saw.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import tarfile
import threading
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np
import pytest

from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis

SMALL = SyntheticSpec(n_patches=10, size=16, frames_per_tile=(5, 7), seed=1)


@dataclass(frozen=True)
class Seen:
    """A request as the server saw it (header names lower-cased)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Reply:
    """An answer; ``cut_at`` sends only that many body bytes, then closes the connection."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    cut_at: int | None = None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        seen = Seen(
            self.command,
            unquote(parts.path),
            parse_qs(parts.query),
            {k.lower(): v for k, v in self.headers.items()},
        )
        reply = self.server.owner.handle(seen)
        self.send_response(reply.status)
        headers = {"Content-Length": str(len(reply.body)), **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body[: reply.cut_at])
            self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeServer


class FakeServer:
    """Base server: subclasses answer in :meth:`route`; use as a context manager."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FakeServer:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def handle(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
        return self.route(seen)

    def route(self, seen: Seen) -> Reply:
        return Reply(404, b"not found")

    def requests(self, method: str | None = None, prefix: str = "") -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self.seen
                if (method is None or s.method == method) and s.path.startswith(prefix)
            ]

    def count(self, method: str | None = None, prefix: str = "") -> int:
        return len(self.requests(method, prefix))


def serve_bytes(data: bytes, range_header: str | None, ignore_range: bool = False) -> Reply:
    """200, or 206/416 for ``Range: bytes=N-`` (unless the range is to be ignored)."""
    match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
    if match is None or ignore_range:
        return Reply(200, data)
    start = int(match.group(1))
    if start >= len(data):
        return Reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
    content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
    return Reply(206, data[start:], {"Content-Range": content_range})


class FileServer(FakeServer):
    """Serves ``files`` (URL path -> bytes); :meth:`fault` scripts the next answers for a path.

    Faults, used one per request in order: ``"cut:N"`` (send N body bytes, then close),
    ``"status:CODE"`` and ``"ignore-range"`` (answer 200 with the whole body).
    """

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        super().__init__()
        self.files = dict(files or {})
        self.faults: dict[str, list[str]] = defaultdict(list)

    def fault(self, path: str, *faults: str) -> None:
        with self._lock:
            self.faults[path].extend(faults)

    def _next_fault(self, path: str) -> str:
        with self._lock:
            return self.faults[path].pop(0) if self.faults[path] else ""

    def route(self, seen: Seen) -> Reply:
        fault = self._next_fault(seen.path)
        if fault.startswith("status:"):
            return Reply(int(fault.split(":")[1]), b"scripted failure")
        return self.content(seen, fault)

    def content(self, seen: Seen, fault: str) -> Reply:
        """The answer to a request that no status fault preempted."""
        if seen.path not in self.files:
            return Reply(404, b"not found")
        reply = serve_bytes(
            self.files[seen.path], seen.headers.get("range"), fault == "ignore-range"
        )
        if fault.startswith("cut:"):
            reply.cut_at = int(fault.split(":")[1])
        return reply


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class ZenodoServer(FileServer):
    """A Zenodo record (``/api/records/<id>``) and its files; ``checksums`` overrides md5s."""

    def __init__(
        self,
        record: str,
        files: dict[str, bytes],
        checksums: dict[str, str] | None = None,
        link: str = "self",
    ) -> None:
        super().__init__({self.file_path(record, k): v for k, v in files.items()})
        self.record, self.keys, self.link = record, dict(files), link
        self.checksums = checksums or {}

    @staticmethod
    def file_path(record: str, key: str) -> str:
        return f"/api/records/{record}/files/{key}/content"

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    def record_json(self) -> dict:
        entries = [
            {
                "key": key,
                "size": len(data),
                "checksum": f"md5:{self.checksums.get(key, md5(data))}",
                "links": {self.link: self.url + self.file_path(self.record, key)},
            }
            for key, data in self.keys.items()
        ]
        return {"id": int(self.record), "files": entries}

    def content(self, seen: Seen, fault: str) -> Reply:
        if seen.path == f"/api/records/{self.record}":
            return Reply(200, json.dumps(self.record_json()).encode())
        return super().content(seen, fault)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
    )


class FakeHub(FakeServer):
    """The Hub's revision, tree (paginated) and resolve endpoints over the files of ``root``.

    ``.npy`` files are Git-LFS files; with ``cdn`` given, resolving one answers 302 to
    ``{cdn.url}/<sha256>`` as the real Hub does. ``corrupt`` paths are served with one byte
    flipped under correct headers.
    """

    def __init__(
        self,
        root: Path,
        repo_id: str = "IGNF/PASTIS-HD",
        commit: str = "0123456789abcdef0123456789abcdef01234567",
        cdn: FileServer | None = None,
        page_size: int = 8,
    ) -> None:
        super().__init__()
        self.repo_id, self.commit, self.cdn, self.page_size = repo_id, commit, cdn, page_size
        self.files = {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }
        self.corrupt: set[str] = set()

    def body(self, path: str) -> bytes:
        data = self.files[path]
        if path not in self.corrupt:
            return data
        return data[:-1] + bytes([data[-1] ^ 0xFF])

    def publish_cdn(self) -> None:
        """Put the (possibly corrupted) LFS bodies on the CDN server under their sha256."""
        assert self.cdn is not None
        for path, data in self.files.items():
            if path.endswith(".npy"):
                self.cdn.files[f"/{hashlib.sha256(data).hexdigest()}"] = self.body(path)

    def tree(self) -> list[dict]:
        entries: list[dict] = []
        for folder in sorted({p.rsplit("/", 1)[0] for p in self.files if "/" in p}):
            entries.append({"type": "directory", "path": folder, "oid": "0" * 40, "size": 0})
        for path, data in self.files.items():
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            if path.endswith(".npy"):
                pointer = lfs_pointer(data)
                entry["oid"] = git_blob_id(pointer)
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": len(pointer),
                }
            entries.append(entry)
        return entries

    def _error(self, status: int, code: str, message: str) -> Reply:
        body = json.dumps({"error": message}).encode()
        return Reply(status, body, {"X-Error-Code": code, "X-Error-Message": message})

    def route(self, seen: Seen) -> Reply:
        repo = re.escape(self.repo_id)
        if m := re.fullmatch(rf"/api/datasets/{repo}/revision/([^/]+)", seen.path):
            return self._revision(m.group(1))
        if m := re.fullmatch(rf"/api/datasets/{repo}/tree/([^/]+)/?", seen.path):
            return self._tree(m.group(1), int(seen.query.get("cursor", ["0"])[0]))
        if m := re.fullmatch(rf"/datasets/{repo}/resolve/([^/]+)/(.+)", seen.path):
            return self._resolve(m.group(1), m.group(2))
        return self._error(404, "RepoNotFound", "Repository not found")

    def _revision(self, revision: str) -> Reply:
        if revision not in ("main", self.commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        info = {
            "id": self.repo_id,
            "sha": self.commit,
            "private": False,
            "siblings": [{"rfilename": p} for p in self.files],
        }
        return Reply(200, json.dumps(info).encode())

    def _tree(self, revision: str, cursor: int) -> Reply:
        if revision != self.commit:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        entries = self.tree()
        page = entries[cursor : cursor + self.page_size]
        headers = {"Content-Type": "application/json"}
        if cursor + self.page_size < len(entries):
            nxt = f"{self.url}/api/datasets/{self.repo_id}/tree/{revision}"
            nxt += f"?recursive=true&expand=false&cursor={cursor + self.page_size}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        return Reply(200, json.dumps(page).encode(), headers)

    def _resolve(self, revision: str, path: str) -> Reply:
        if revision not in ("main", self.commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if path not in self.files:
            return self._error(404, "EntryNotFound", f"{path} does not exist")
        data = self.files[path]
        headers = {"X-Repo-Commit": self.commit}
        if not path.endswith(".npy"):
            return Reply(200, self.body(path), {**headers, "ETag": f'"{git_blob_id(data)}"'})
        sha = hashlib.sha256(data).hexdigest()
        headers |= {
            "ETag": f'"{git_blob_id(lfs_pointer(data))}"',
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(len(data)),
        }
        if self.cdn is not None:
            return Reply(302, b"", {**headers, "Location": f"{self.cdn.url}/{sha}"})
        return Reply(200, self.body(path), headers)


class ModelHub(FakeServer):
    """The hub's ``resolve`` endpoint for model repositories, at commits only (a branch name is
    an unknown revision here, so a download that loses its pinned revision fails).

    Every file is answered as a Git-LFS file: ``X-Repo-Commit``, ``ETag`` (the pointer's blob id),
    ``X-Linked-Etag`` (its sha256: the hub cache names the blob after it), ``X-Linked-Size``.
    ``served`` bytes, when given, go out instead of the file under the file's headers (a transfer
    gone wrong).
    """

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[tuple[str, str, str], tuple[bytes, bytes]] = {}

    def add(
        self, repo_id: str, commit: str, filename: str, data: bytes, served: bytes | None = None
    ) -> str:
        """Publish ``data``; return its URL on huggingface.co (this server is its HF_ENDPOINT)."""
        self.files[(repo_id, commit, filename)] = (data, data if served is None else served)
        return f"https://huggingface.co/{repo_id}/resolve/{commit}/{filename}"

    def path(self, repo_id: str, commit: str, filename: str) -> str:
        return f"/{repo_id}/resolve/{commit}/{filename}"

    def _error(self, code: str, message: str, commit: str | None = None) -> Reply:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        if commit is not None:
            headers["X-Repo-Commit"] = commit
        return Reply(404, json.dumps({"error": message}).encode(), headers)

    def route(self, seen: Seen) -> Reply:
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", seen.path)
        if match is None:
            return self._error("RepoNotFound", "Repository not found")
        repo_id, revision, filename = match.groups()
        if not any(key[0] == repo_id for key in self.files):
            return self._error("RepoNotFound", "Repository not found")
        if not any(key[:2] == (repo_id, revision) for key in self.files):
            return self._error("RevisionNotFound", f"Invalid rev id: {revision}")
        if (repo_id, revision, filename) not in self.files:
            return self._error("EntryNotFound", f"{filename} does not exist", revision)
        data, served = self.files[(repo_id, revision, filename)]
        reply = serve_bytes(served, seen.headers.get("range"))
        reply.headers |= {
            "X-Repo-Commit": revision,
            "ETag": f'"{git_blob_id(lfs_pointer(data))}"',
            "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Linked-Size": str(len(data)),
        }
        return reply


def write_small_dataset(root: Path, extras: bool = False) -> Path:
    """A 10-patch synthetic PASTIS under ``root``; ``extras`` adds S1, SPOT and README files."""
    write_synthetic_pastis(root, SMALL)
    if extras:
        for folder, name in (("DATA_S1A", "S1A_10000.npy"), ("DATA_SPOT", "SPOT_10000.npy")):
            (root / folder).mkdir(exist_ok=True)
            np.save(root / folder / name, np.ones((2, 3, 4, 4), dtype=np.float32))
        (root / "README.md").write_text("# PASTIS-HD (test copy)\n")
    return root


def make_archive(src: Path, out: Path, top: str = "PASTIS") -> Path:
    """Archive the folder ``src`` as ``out`` (.zip, .tar, .tar.gz or .tgz) under ``top/``."""
    if out.name.endswith(".zip"):
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            for path in sorted(src.rglob("*")):
                zf.write(path, f"{top}/{path.relative_to(src).as_posix()}")
    else:
        mode = "w:gz" if out.name.endswith(("gz", ".tgz")) else "w"
        with tarfile.open(out, mode) as tf:
            tf.add(src, arcname=top)
    return out


def guard_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any socket connection to a host other than 127.0.0.1 fail the test."""
    connect = socket.socket.connect

    def checked(sock: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host != "127.0.0.1":
            raise AssertionError(f"test tried to connect to {address!r}")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", checked)
