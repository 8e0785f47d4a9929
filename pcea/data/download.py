"""Fetch ModelNet40 archives: streamed, resumable, verified and safely extracted.

The archives pcea knows (file name, mirror URLs, SHA-256, size, the directory each
creates) are data in ``pcea/data/checksums.json`` (package data, so an installed
pcea has it), not code. Where no SHA-256 is known from a source we could check the
entry holds ``null``; the download then goes ahead, prints the SHA-256 it computed
and warns that the archive was *not* verified (pass ``sha256=`` / ``--sha256`` to verify).

Only the standard library's urllib is used. A download goes to
``<file>.part`` and resumes with an HTTP ``Range`` request after an
interruption; the finished file is checked (zip signature, then SHA-256)
before it is renamed into place. A server that sends no ``Content-Length`` is
not trusted to have sent everything: the transfer counts as complete only when
the SHA-256 matches or, without one, the file is a well-formed zip (its end of
central directory is there); otherwise it is resumed. An archive that fails a
check or cannot be extracted is never used again: one pcea downloaded is
deleted, one found in place is renamed to ``<file>.refused`` and downloaded
anew. One download per archive runs at a time in a root: a second waits for
the first (an advisory lock, ``.<file>.lock``) and then finds the data there.
Extraction rejects absolute paths, ``..`` members and symbolic links, bounds
the member count and the uncompressed size (zip bombs), and writes into a
temporary directory that is renamed into place only when complete, so a
failure never leaves half-extracted data. A marker file inside the extracted
directory makes a second call a no-op.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pcea.atomic import replacing_dir, temporary_dir
from pcea.data import default_root
from pcea.digest import file_sha256
from pcea.errors import PceaError, PceaFileError, open_regular
from pcea.lock import HolderLock, Timeout

CHECKSUMS_FILE = Path(__file__).resolve().with_name("checksums.json")
MARKER = ".pcea-download.json"
FORMATS = ("h5", "mesh", "resampled")
# Generous bounds: the largest ModelNet40 archive (the Princeton meshes) is a few GB.
DEFAULT_MAX_DOWNLOAD_BYTES = 8 * 1024**3
DEFAULT_MAX_EXTRACT_BYTES = 40 * 1024**3
DEFAULT_MAX_MEMBERS = 200_000
_CHUNK = 1 << 20
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")


@dataclass(frozen=True)
class ArchiveSpec:
    """One downloadable archive, as described in ``pcea/data/checksums.json``."""

    file: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    extracts_to: str


class UnreachableError(PceaError):
    """A URL could not be reached or answered with an HTTP error; another mirror may work."""


class _Interrupted(Exception):
    """The transfer stopped early; the ``.part`` file keeps what arrived."""


class _Restart(Exception):
    """The ``.part`` file cannot be resumed from and was removed; start again from byte 0."""


def archive_spec(dataset: str, fmt: str, *, checksums: str | os.PathLike = CHECKSUMS_FILE) -> ArchiveSpec:
    """Look up an archive in the checksums file.

    Args:
        dataset: the dataset name, ``"modelnet40"``.
        fmt: the layout, one of ``FORMATS``.
        checksums: the JSON file to read.

    Returns:
        The archive's :class:`ArchiveSpec`.
    """
    try:
        table = json.loads(Path(checksums).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PceaFileError(checksums, "missing; it lists the archives and their checksums and ships "
                                       "with pcea as pcea/data/checksums.json (reinstall pcea)") from None
    except (OSError, ValueError) as err:
        raise PceaFileError(checksums, f"cannot be read ({err})") from None
    entries = table.get(dataset)
    if not isinstance(entries, dict):
        raise PceaError(f"unknown dataset {dataset!r}; known: {', '.join(k for k in table if k[0] != '_')}")
    entry = entries.get(fmt)
    if not isinstance(entry, dict):
        raise PceaError(f"unknown format {fmt!r} for {dataset}; known: {', '.join(entries)}")
    try:
        return ArchiveSpec(file=entry["file"], urls=tuple(entry["urls"]), sha256=entry["sha256"],
                           size=entry["size"], extracts_to=entry["extracts_to"])
    except (KeyError, TypeError) as err:
        raise PceaFileError(checksums, f"entry {dataset}/{fmt} is malformed ({err})") from None


def _check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise PceaError(f"--sha256 must be 64 hexadecimal digits, got {value!r}")
    return value


def _looks_like_html(head: bytes, content_type: str = "") -> bool:
    if head.startswith(_ZIP_SIGNATURES):
        return False
    return head.lstrip().lower().startswith(_HTML_STARTS) or content_type == "text/html"


def _size(num_bytes: float) -> str:
    """A byte count as tqdm's bar shows it (``977kB``, ``4.77MB``): powers of 1024, as ``--max-gb``."""
    return tqdm.format_sizeof(num_bytes, "B", 1024)


def _say(message: str) -> None:
    print(f"pcea: {message}", file=sys.stderr)


class _Progress:
    """A tqdm bar on a terminal; otherwise a plain line at every tenth of the transfer.

    Off a terminal tqdm would redraw its bar with carriage returns, one ever-growing line in
    a log file; the tenth lines are what a log can read.
    """

    def __init__(self, name: str, total: int | None, initial: int, enabled: bool | None):
        self.enabled = enabled is not False
        self.bar = None
        self.name, self.total, self.done = name, total, initial
        self.next_tenth = 1 if total is None else initial * 10 // max(total, 1) + 1
        if not self.enabled:
            return
        if sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=name, file=sys.stderr, leave=False)
        else:
            size = _size(total) if total is not None else "unknown size"
            start = f", resuming at {_size(initial)}" if initial else ""
            _say(f"downloading {name} ({size}{start})")

    def update(self, num_bytes: int) -> None:
        self.done += num_bytes
        if self.bar is not None:
            self.bar.update(num_bytes)
        elif self.enabled and self.total:
            tenth = min(self.done * 10 // self.total, 10)
            if tenth >= self.next_tenth:
                _say(f"{self.name}: {tenth * 10}% ({_size(self.done)})")
                self.next_tenth = tenth + 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _content_range(header: str | None) -> tuple[int | None, int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` or ``bytes */TOTAL`` into (start, end, total)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*", header or "")
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (int(start) if start else None, int(end) if end else None,
            int(total) if total and total != "*" else None)


def _fetch_into(url: str, part: Path, *, max_bytes: int, timeout: float, progress: bool | None) -> int | None:
    """One HTTP request that appends to (or restarts) ``part``; raises one of the private errors.

    Returns the file's size as the server declared it, or None when it declared none (then the
    caller decides whether what arrived is complete).
    """
    if _url_scheme(url) == "file":
        return _copy_local(url, part, max_bytes=max_bytes)
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "pcea-download", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        with err:
            if err.code == 416 and offset:
                # Range Not Satisfiable: either the part is already complete, or it is not a prefix
                # of what the server has now.
                if _content_range(err.headers.get("Content-Range"))[2] == offset:
                    return offset
                part.unlink()
                raise _Restart() from None
            raise UnreachableError(f"HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UnreachableError(str(reason) or type(reason).__name__) from None
    except (ValueError, http.client.InvalidURL) as err:  # a port that is not a number, a control character
        raise PceaError(f"{url!r} is not a valid URL ({err})") from None

    with response:
        if response.status == 206:
            start, _, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Restart()
            mode = "ab"
        elif response.status == 200:
            # A server that ignores Range sends the whole file again: start over.
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise UnreachableError(f"HTTP {response.status} {response.reason}")
        if total is not None and total > max_bytes:
            part.unlink(missing_ok=True)
            raise PceaError(f"{url} is {_size(total)}, more than the {_size(max_bytes)} allowed; "
                            f"raise the limit if this is expected")
        content_type = response.headers.get_content_type()
        bar = _Progress(part.name.removesuffix(".part"), total, offset, progress)
        received = offset
        try:
            with open(part, mode) as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (http.client.HTTPException, OSError) as err:
                        raise _Interrupted(f"{type(err).__name__}: {err}") from None
                    if not chunk:
                        break
                    if received == 0 and _looks_like_html(chunk[:512], content_type):
                        out.close()
                        part.unlink()
                        raise PceaError(f"{url}: the mirror returned an HTML page, not a zip; "
                                        f"nothing was kept")
                    received += len(chunk)
                    if received > max_bytes:
                        out.close()
                        part.unlink()
                        raise PceaError(f"{url} sent more than the {_size(max_bytes)} allowed; "
                                        f"the partial file was deleted")
                    out.write(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
        if total is not None and received < total:
            raise _Interrupted(f"connection closed at {received} of {total} bytes")
        return total


_SCHEMES = ("http", "https", "file")


def _url_scheme(url: str) -> str:
    """The scheme of ``url``, one of ``_SCHEMES``; a PceaError naming the URL for anything else."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as err:  # 'http://[::1': Invalid IPv6 URL
        raise PceaError(f"{url!r} is not a valid URL ({err})") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise PceaError(f"{url!r}: unsupported URL scheme {parts.scheme or '(none)'!r}; expected "
                        f"{', '.join(_SCHEMES)}")
    return parts.scheme.lower()


def _copy_local(url: str, part: Path, *, max_bytes: int) -> int:
    """Copy the regular file a ``file://`` URL names to ``part``; returns its size.

    :func:`pcea.errors.open_regular` refuses a FIFO (which would block for ever), a device
    (endless data) or a file over ``max_bytes`` before anything is read.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise PceaError(f"{url}: a file URL must name a local file (file:///PATH), not host {parts.netloc!r}")
    handle, size = open_regular(urllib.request.url2pathname(parts.path), max_bytes, "zip archive",
                                "--max-gb, max_download_bytes")
    with open(handle, "rb") as stream, open(part, "wb") as out:
        while chunk := stream.read(_CHUNK):
            out.write(chunk)
    return size


def download_file(url: str, dest: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
                  retries: int = 2, backoff: float = 1.0, timeout: float = 30.0,
                  progress: bool | None = None, sha256: str | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming after interruptions.

    Args:
        url: what to fetch (http, https, or file:// naming a regular local file, copied).
        dest: the final path; the data lands in ``<dest>.part`` until complete, which a later call
            resumes with an HTTP Range request.
        max_bytes: refuse a file larger than this (checked on the declared size and while streaming).
        retries: how many times to resume within this call after the connection drops.
        backoff: seconds to wait before the first retry (doubled each time).
        timeout: socket timeout in seconds.
        progress: False for silence; otherwise a bar on a terminal and plain lines elsewhere.
        sha256: the expected digest. When the server sends no ``Content-Length``, the transfer is
            complete only if the file has this digest or, without one, is a well-formed zip;
            otherwise it is resumed like a dropped connection.

    Returns:
        ``dest``, complete. It is not verified here: see :func:`verify_archive`.

    Raises:
        PceaError: HTML instead of data, a file over ``max_bytes``, or still interrupted after the
            retries (the ``.part`` file is kept so the next call resumes).
        UnreachableError: the URL could not be reached or answered with an HTTP error.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PceaFileError(dest.parent, f"cannot create the directory ({err.strerror or err})") from None
    restarts = 0
    attempt = 0
    while True:
        try:
            total = _fetch_into(url, part, max_bytes=max_bytes, timeout=timeout, progress=progress)
            if total is None and not _whole_without_length(part, sha256):
                kept = part.stat().st_size if part.exists() else 0
                raise _Interrupted(f"the server declared no size and the {_size(kept)} received are not "
                                   + ("the file with the expected SHA-256" if sha256 else "a whole zip"))
            break
        except UnreachableError as err:
            raise UnreachableError(f"could not reach {url} ({err})") from None
        except OSError as err:  # network errors became the private ones above: this is the local disk
            raise PceaFileError(part, f"cannot write the download ({err.strerror or err})") from None
        except _Restart:
            restarts += 1
            if restarts > 1:
                raise UnreachableError(f"could not download {url}: its answers to a Range request are "
                                       f"inconsistent") from None
        except _Interrupted as err:
            if attempt >= retries:
                kept = part.stat().st_size if part.exists() else 0
                raise PceaError(f"{url}: download interrupted ({err}); {_size(kept)} kept in {part}, "
                                f"run the same command again to resume") from None
            time.sleep(backoff * 2**attempt)
            attempt += 1
    os.replace(part, dest)
    return dest


def _whole_without_length(part: Path, sha256: str | None) -> bool:
    """Whether a transfer without a declared size delivered the whole file."""
    if not part.is_file():
        return False
    if sha256 is not None:
        return file_sha256(part) == sha256
    return zipfile.is_zipfile(part)  # a zip ends with its central directory: a cut one has none


def verify_archive(path: str | os.PathLike, sha256: str | None, *, delete_on_failure: bool,
                   size: int | None = None) -> str:
    """Check that ``path`` is a zip archive and, when ``sha256`` is given, that it matches.

    Args:
        path: the archive.
        sha256: the expected digest, or None to only compute it.
        delete_on_failure: remove the file when a check fails (for files pcea downloaded itself).
        size: the expected size in bytes, or None; a file of another size is refused unhashed.

    Returns:
        The archive's SHA-256.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(512)
    actual = path.stat().st_size
    if size is not None and actual != size and not _looks_like_html(head):
        problem = f"is {actual:,} bytes, the archive has {size:,} (truncated or another file)"
        if delete_on_failure:
            path.unlink()
            problem += "; the file was deleted"
        raise PceaFileError(path, problem)
    digest = file_sha256(path)
    problem = None
    if _looks_like_html(head):
        problem = "the mirror returned an HTML page, not a zip"
    elif not head.startswith(_ZIP_SIGNATURES):
        problem = f"not a zip archive (starts with {head[:8]!r})"
    if sha256 is not None and digest != sha256:
        mismatch = f"SHA-256 mismatch (expected {sha256}, got {digest})"
        problem = f"{problem}; {mismatch}" if problem else mismatch
    if problem:
        if delete_on_failure:
            path.unlink()
            problem += "; the file was deleted"
        raise PceaFileError(path, problem)
    return digest


def _member_path(archive: Path, name: str) -> PurePosixPath | None:
    """The safe relative path of a zip member, or None for an entry that names nothing."""
    if "\x00" in name:
        raise PceaFileError(archive, f"member {name!r} has a NUL byte in its name")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"[A-Za-z]:", posix):
        raise PceaFileError(archive, f"member {name!r} has an absolute path; refusing to extract")
    parts = [p for p in PurePosixPath(posix).parts if p != "."]
    if ".." in parts:
        raise PceaFileError(archive, f"member {name!r} points outside the target ('..'); "
                                     f"refusing to extract")
    return PurePosixPath(*parts) if parts else None


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *,
                 max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES, max_members: int = DEFAULT_MAX_MEMBERS) -> Path:
    """Extract a zip archive into ``dest``, which must not exist yet, all or nothing.

    Members are written into a temporary directory next to ``dest`` that is renamed to ``dest``
    only when every member is out; on any failure it is removed.

    Args:
        archive: the zip file.
        dest: the directory to create with the archive's contents.
        max_bytes: the most uncompressed bytes allowed in total (declared and actually written).
        max_members: the most entries allowed.

    Returns:
        ``dest``.

    Raises:
        PceaFileError: an unreadable or corrupt archive, an absolute or ``..`` member, a symbolic
            link, a duplicate member, or more members or bytes than allowed.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise PceaFileError(dest, "already exists; refusing to extract over it")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise PceaFileError(archive, f"not a readable zip archive ({err})") from None
    with zf:
        members = zf.infolist()
        if len(members) > max_members:
            raise PceaFileError(archive, f"has {len(members)} members, more than the {max_members} allowed")
        declared = sum(m.file_size for m in members)
        if declared > max_bytes:
            raise PceaFileError(archive, f"would expand to {_size(declared)}, more than the "
                                         f"{_size(max_bytes)} allowed")
        plan = []
        for member in members:
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise PceaFileError(archive, f"member {member.filename!r} is a symbolic link; "
                                             f"refusing to extract")
            plan.append((member, _member_path(archive, member.filename)))
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PceaFileError(dest.parent, f"cannot write here ({err.strerror or err})") from None
        try:
            with replacing_dir(dest, suffix=".extracting") as tmp:  # removed on any failure
                written = 0
                for member, relative in plan:
                    if relative is None:
                        continue
                    target = tmp / relative
                    if member.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "xb") as out:
                        while chunk := src.read(_CHUNK):
                            written += len(chunk)
                            if written > max_bytes:
                                raise PceaFileError(archive, f"expands past the {_size(max_bytes)} allowed")
                            out.write(chunk)
        except FileExistsError as err:
            raise PceaFileError(archive, f"member {err.filename!r} appears twice or clashes with a "
                                         f"directory; refusing to extract") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as err:
            raise PceaFileError(archive, f"corrupt or unsupported member ({err})") from None
        except OSError as err:  # a full disk, a read-only directory
            raise PceaFileError(dest, f"cannot extract here ({err.strerror or err}); "
                                      f"nothing was left behind") from None
    return dest


def _install(archive: Path, root: Path, spec: ArchiveSpec, marker: dict, *, max_bytes: int,
             max_members: int) -> Path:
    """Extract ``archive`` and move its ``spec.extracts_to`` directory into ``root``, with a marker."""
    target = root / spec.extracts_to
    try:
        # The archive is extracted whole next to root, and only its extracts_to folder is renamed in.
        with temporary_dir(root, prefix=f".{spec.extracts_to}.", suffix=".staging") as staging:
            tree = safe_extract(archive, staging / "tree", max_bytes=max_bytes, max_members=max_members)
            inner = tree / spec.extracts_to
            if not inner.is_dir():
                found = sorted(p.name for p in tree.iterdir())[:5]
                raise PceaFileError(archive, f"does not contain the directory {spec.extracts_to}/ "
                                             f"(top level: {', '.join(found) or 'nothing'})")
            (inner / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            os.replace(inner, target)
    except OSError as err:
        raise PceaFileError(root, f"cannot extract here ({err.strerror or err}); "
                                  f"nothing was left behind") from None
    return target


def fetch_modelnet40(fmt: str = "h5", root: str | os.PathLike | None = None, *, url: str | None = None,
                     sha256: str | None = None, max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
                     max_extract_bytes: int = DEFAULT_MAX_EXTRACT_BYTES,
                     max_members: int = DEFAULT_MAX_MEMBERS, keep_archive: bool = False,
                     checksums: str | os.PathLike = CHECKSUMS_FILE, retries: int = 2, backoff: float = 1.0,
                     timeout: float = 30.0, progress: bool | None = None) -> Path:
    """Download and extract one ModelNet40 layout into ``root``, unless it is already there.

    An archive already in ``root`` (placed there by hand) is used instead of downloading.

    Args:
        fmt: ``"h5"`` (modelnet40_ply_hdf5_2048), ``"mesh"`` (Princeton OFF meshes) or
            ``"resampled"`` (modelnet40_normal_resampled).
        root: where archives land and extract (default: ``$PCEA_DATA`` or ``datasets/``).
        url: a mirror to use instead of the URLs in the checksums file.
        sha256: the expected SHA-256 (overrides the checksums file). Without one the archive is
            used unverified, with a warning that prints its computed SHA-256.
        max_download_bytes: refuse a larger download.
        max_extract_bytes: refuse an archive that expands to more.
        max_members: refuse an archive with more entries.
        keep_archive: keep the zip after extraction (it is deleted by default).
        checksums: the JSON file describing the archives.
        retries: resumptions within this call after a dropped connection.
        backoff: seconds before the first retry.
        timeout: socket timeout in seconds.
        progress: False for silence; otherwise a bar on a terminal and plain lines elsewhere.

    Returns:
        The extracted directory, ``root / <extracts_to>``.
    """
    if fmt not in FORMATS:
        raise PceaError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    spec = archive_spec("modelnet40", fmt, checksums=checksums)
    expected = _check_sha256(sha256) or spec.sha256
    if root is None:
        root = default_root()
    root = Path(root)
    target = root / spec.extracts_to
    if (target / MARKER).is_file():
        _say(f"{target} is already there; nothing to do")
        return target
    if target.exists():
        _say(f"{target} already exists (not made by pcea download); using it as it is")
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PceaFileError(root, f"cannot create the directory ({err.strerror or err})") from None
    with _download_lock(root, spec.file):
        if (target / MARKER).is_file():  # another pcea download finished it while this one waited
            _say(f"{target} is already there; nothing to do")
            return target
        # The size is checked only against the shipped checksum it was published with.
        size = spec.size if expected == spec.sha256 else None
        archive = root / spec.file
        installed = None
        if archive.is_file():
            _say(f"using {archive}, found in place")
            try:
                digest = verify_archive(archive, expected, delete_on_failure=False, size=size)
                installed = _install_checked(archive, root, spec, fmt, str(archive), digest, expected,
                                             max_bytes=max_extract_bytes, max_members=max_members)
            except PceaFileError as err:  # a refused archive (not the disk) is never tried again
                if err.path != os.fspath(archive):
                    raise
                aside = _move_aside(archive)
                _say(f"{err}; renamed it to {aside.name}, it will not be used again. Downloading {spec.file}")
        if installed is None:
            failures = []
            for source in [url] if url else list(spec.urls):
                try:
                    download_file(source, archive, max_bytes=max_download_bytes, retries=retries,
                                  backoff=backoff, timeout=timeout, progress=progress, sha256=expected)
                    break
                except UnreachableError as err:
                    failures.append(str(err))
            else:
                raise PceaError(f"{'; '.join(failures)}. Download {spec.file} by hand and put it in {root}/ "
                                f"(or extract it there so that {target}/ exists), then run this command "
                                f"again; or use a mirror you trust: pcea download modelnet40 --format {fmt} "
                                f"--url URL --sha256 HEX (mirrors and checksums: datasets/README.md)")
            digest = verify_archive(archive, expected, delete_on_failure=True, size=size)
            try:
                installed = _install_checked(archive, root, spec, fmt, source, digest, expected,
                                             max_bytes=max_extract_bytes, max_members=max_members)
            except _RefusedArchive as err:
                archive.unlink(missing_ok=True)
                raise PceaFileError(archive, f"{err.problem}; the download was deleted") from None
    if not keep_archive:
        archive.unlink()
    _say(f"ModelNet40 ({fmt}) is in {installed}")
    return installed


class _RefusedArchive(PceaFileError):
    """The archive itself cannot be used (not a readable zip, a hostile member, the wrong content)."""


def _install_checked(archive: Path, root: Path, spec: ArchiveSpec, fmt: str, source: str, digest: str,
                     expected: str | None, *, max_bytes: int, max_members: int) -> Path:
    """:func:`_install` with a marker; a fault of the archive (not the disk) is :class:`_RefusedArchive`."""
    if expected is None:
        _say(f"WARNING: {spec.file} was NOT verified: no SHA-256 is known for it. Its SHA-256 is {digest}; "
             f"compare it with a source you trust and pass --sha256 {digest} from then on")
    marker = {"dataset": "modelnet40", "format": fmt, "file": spec.file, "source": source,
              "sha256": digest, "verified": expected is not None}
    try:
        return _install(archive, root, spec, marker, max_bytes=max_bytes, max_members=max_members)
    except PceaFileError as err:
        if err.path == os.fspath(archive):
            raise _RefusedArchive(archive, err.problem) from None
        raise


def _move_aside(archive: Path) -> Path:
    """Rename a refused archive found in place to ``<name>.refused`` (``.refused.1``, ... if taken)."""
    aside = archive.with_name(archive.name + ".refused")
    number = 0
    while aside.exists():
        number += 1
        aside = archive.with_name(f"{archive.name}.refused.{number}")
    try:
        os.replace(archive, aside)
    except OSError as err:
        raise PceaFileError(archive, f"refused, and cannot be renamed aside ({err.strerror or err}); "
                                     "delete it and run this command again") from None
    return aside


@contextlib.contextmanager
def _download_lock(root: Path, name: str) -> Iterator[None]:
    """Hold the advisory lock ``root/.<name>.lock`` for one download; a second caller waits for it."""
    lock = HolderLock(root / f".{name}.lock")
    try:
        try:
            lock.acquire(wait=False)
        except Timeout:
            _say(f"another pcea download ({lock.holder()}) is fetching {name} into {root}; "
                 "waiting for it to finish")
            lock.acquire(wait=True)
    except OSError as err:
        raise PceaFileError(lock.path, f"cannot create the download lock ({err.strerror or err})") from None
    try:
        yield
    finally:
        lock.release()
