"""A shard set's folder in object storage: one small layer over fsspec.

A set's location is a local folder or a URL: ``s3://bucket/prefix``,
``gs://bucket/prefix``, ``http(s)://host/path`` (read-only) or
``file:///path`` (a local folder). :func:`is_url` tells them apart;
:class:`Store` reads and writes the objects of one URL's folder.

Credentials and endpoints come from each backend's own environment, never
from this tool's options: for S3 the variables and files boto reads
(``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``, ``~/.aws/credentials``,
``AWS_ENDPOINT_URL`` for a store other than AWS), for GCS Google's default
credentials. The backends (s3fs, gcsfs, and aiohttp for HTTP) are the
``[remote]`` extra; without it a URL is one line saying how to get it.

Every failure of the store is one line naming the URL and the fix
(:class:`StoreError`); a transient one (a refused or dropped connection, a
timeout, a 5xx answer) is retried :data:`RETRIES` times with exponential
backoff first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar
from urllib.parse import unquote, urlsplit

from ..common.errors import UserError
from ..common.files import disk_errors

logger = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp"}
READ_ONLY = {"http", "https"}
# Retries of a transient failure, waiting BACKOFF_S, 2x, 4x ... between tries (about 15 s in all): long
# enough for a connection reset or a store's brief 503, short enough that a store gone for good stops the
# run while its last checkpoint is fresh.
# SIMPSONS_SHARDS_RETRIES and SIMPSONS_SHARDS_BACKOFF_S change them (the tests' faults use short ones).
RETRIES = int(os.environ.get("SIMPSONS_SHARDS_RETRIES", 4))
BACKOFF_S = float(os.environ.get("SIMPSONS_SHARDS_BACKOFF_S", 1.0))
# The backends' own retries are turned down so that these are the ones that count (s3fs retries 5 times,
# botocore up to 5 more inside each: a store that is down took 53 s to report).
_OPTIONS = {"s3": {"config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"},
                                                    "connect_timeout": 10, "read_timeout": 60}}}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
REMOTE_EXTRA = "pip install 'simpsons-shards[remote]' (`make install` does)"


class StoreError(UserError):
    """The object store refused or failed a request: one line naming the URL and the fix."""


class PreconditionFailed(StoreError):
    """A conditional write lost: another writer changed the object first."""


def is_url(location) -> bool:
    """Whether ``location`` is a URL (``s3://...``) rather than a local path (``file://`` counts as a URL)."""
    return isinstance(location, str) and bool(_URL.match(location))


def local_folder(location) -> Optional[Path]:
    """The local folder of a ``file://`` URL or a plain path; None for a remote URL."""
    if not is_url(location):
        return Path(location)
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    return None


def _retryable(exc: BaseException) -> bool:
    """A failure worth trying again: the connection (refused, reset, timed out) or the server's (5xx)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return False
    text = str(exc)
    if isinstance(exc, (ConnectionError, TimeoutError)) or name in (
            "ClientConnectorError", "ServerDisconnectedError", "ClientPayloadError", "ClientOSError",
            "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
            "ServerTimeoutError", "IncompleteReadError", "ResponseStreamingError"):
        return True
    return bool(re.search(r"\b(5\d\d|SlowDown|ServiceUnavailable|InternalError|RequestTimeout)\b", text))


class Store:
    """The objects under one URL's folder.

    Args:
        url: ``s3://bucket/prefix`` and the like (see the module's notes).
        retries: tries after the first for a transient failure.

    Raises:
        StoreError: an unknown scheme, or the backend's package missing.
    """

    def __init__(self, url: str, retries: Optional[int] = None, backoff_s: Optional[float] = None) -> None:
        m = _URL.match(url)
        if not m or m.group(1).lower() not in SCHEMES:
            raise StoreError(f"{url}: not a location this tool reads (a local folder, or an s3://, gs://, "
                             f"http(s):// or file:// URL)")
        self.url = url.rstrip("/")
        self.scheme = m.group(1).lower()
        self.retries = RETRIES if retries is None else retries
        self.backoff_s = BACKOFF_S if backoff_s is None else backoff_s
        self._fs = None
        self._pid: Optional[int] = None
        self.fs   # the backend's import, now: a missing extra is said before any work starts

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fs": None, "_pid": None}   # a filesystem's event loop does not cross processes

    @property
    def writable(self) -> bool:
        return self.scheme not in READ_ONLY

    @property
    def fs(self):
        """This process's fsspec filesystem (made again after a fork: its event loop and sockets stay behind)."""
        if self._fs is None or self._pid != os.getpid():
            try:
                import fsspec

                self._fs = fsspec.filesystem(self.scheme, skip_instance_cache=True, **_OPTIONS.get(self.scheme, {}))
                if hasattr(self._fs, "retries"):
                    self._fs.retries = 1   # s3fs's own loop (a class attribute there)
            except ImportError:
                raise StoreError(f"{self.url}: {self.scheme}:// needs {SCHEMES[self.scheme]}, which is not "
                                 f"installed; {REMOTE_EXTRA}") from None
            self._pid = os.getpid()
        return self._fs

    def path(self, name: str) -> str:
        """The backend's path of object ``name`` in this folder."""
        return f"{self.url}/{name}" if self.scheme in READ_ONLY else f"{self.url.split('://', 1)[1]}/{name}"

    def where(self, name: str = "") -> str:
        """The URL of object ``name``, for messages."""
        return f"{self.url}/{name}" if name else self.url

    def call(self, what: str, name: str, fn: Callable[[], T]) -> T:
        """``fn()`` with retries of transient failures; any failure left is one :class:`StoreError`."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (StoreError, UserError):
                raise
            except Exception as exc:   # noqa: BLE001 - every backend raises its own kinds; each is translated
                if attempt < self.retries and _retryable(exc):
                    logger.warning("%s: %s failed (%s); retrying in %.0f s", self.where(name), what,
                                   _short(exc), delay)
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise translate(exc, self.where(name), what, attempt) from None
        raise AssertionError("unreachable")

    def read(self, name: str, limit: Optional[int] = None) -> bytes:
        """The bytes of object ``name`` (refused past ``limit`` bytes, when given, before reading them)."""
        if limit is not None:
            size = self.size(name)
            if size > limit:
                raise StoreError(f"{self.where(name)}: {size:,} bytes, more than the {limit:,} such a file may "
                                 f"have; it is not this tool's")
        return self.call("read", name, lambda: self.fs.cat_file(self.path(name)))

    def size(self, name: str) -> int:
        return int(self.call("look up", name, lambda: self.fs.info(self.path(name)))["size"])

    def etag(self, name: str) -> Optional[str]:
        """The object's version tag (S3 ETag, GCS generation), None where the store keeps none or it is absent."""
        try:
            info = self.call("look up", name, lambda: self.fs.info(self.path(name)))
        except StoreError as exc:
            if isinstance(exc.__context__, FileNotFoundError) or "no object" in str(exc):
                return None
            raise
        tag = info.get("ETag") or info.get("generation")
        return str(tag) if tag is not None else None

    def download(self, name: str, dest: Path, chunk: int = 8 << 20) -> tuple[int, str]:
        """Stream object ``name`` into the local file ``dest`` (created): (its bytes, its SHA-256).

        A connection lost part way starts the object again, hashing afresh: a
        partial try never counts.
        """
        def fetch() -> tuple[int, str]:
            n, digest = 0, hashlib.sha256()
            with self.fs.open(self.path(name), "rb", block_size=chunk, cache_type="none") as src, \
                    disk_errors(dest), open(dest, "wb") as out:
                while True:
                    block = src.read(chunk)
                    if not block:
                        return n, digest.hexdigest()
                    digest.update(block)
                    out.write(block)
                    n += len(block)

        return self.call("read", name, fetch)

    def upload(self, local: Path, name: str) -> None:
        """Put the local file ``local`` as object ``name`` (one object, whole or not at all)."""
        self._check_writable(name)
        self.call("write", name, lambda: self.fs.put_file(str(local), self.path(name)))

    def commit(self, name: str, data: bytes, replaces: Optional[str]) -> None:
        """Write ``data`` as ``name`` only if the object is still what this writer read: absent
        (``replaces=None``) or at version ``replaces`` (its :meth:`etag`).

        On S3 this is the store's own conditional write (``If-None-Match: *`` /
        ``If-Match: ETag``), atomic against every other writer; a local folder
        uses an exclusive create or a lock (:mod:`pipeline.building.publish`).

        Raises:
            PreconditionFailed: another writer changed ``name`` first.
        """
        self._check_writable(name)
        if self.scheme != "s3":
            if self.etag(name) != replaces:   # GCS and others: a check, then the write (see docs/remote.md)
                raise PreconditionFailed(f"{self.where(name)}: another writer changed it during this build")
            self.call("write", name, lambda: self.fs.pipe_file(self.path(name), data))
            return
        kwargs = {"mode": "create"} if replaces is None else {"IfMatch": replaces}
        try:
            self.call("write", name, lambda: self.fs.pipe_file(self.path(name), data, **kwargs))
        except StoreError as exc:
            if isinstance(exc.__cause__ or exc.__context__, FileExistsError) or "pre-condition" in str(exc) \
                    or "precondition" in str(exc).lower():
                raise PreconditionFailed(f"{self.where(name)}: another writer committed it during this build; "
                                         f"nothing of this build is listed; run it again to build on theirs") \
                    from None
            raise

    def _check_writable(self, name: str) -> None:
        if not self.writable:
            raise StoreError(f"{self.where(name)}: {self.scheme}:// is read-only here; publish to s3://, gs:// or "
                             f"a local folder and serve that")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:160]


def translate(exc: BaseException, url: str, what: str, retried: int = 0) -> StoreError:
    """The one line a backend's failure becomes: what happened at ``url`` and the fix."""
    name = type(exc).__name__
    text = _short(exc)
    after = f" after {retried + 1} tries" if retried else ""
    if isinstance(exc, FileNotFoundError) or re.search(r"NoSuchKey|Not Found|\b404\b", text):
        err = StoreError(f"{url}: no object there (no object found); check the URL, or publish the set with "
                         f"`python cli.py preprocess --out URL`")
    elif name in ("NoCredentialsError", "PartialCredentialsError") or "credentials" in text.lower() \
            and "invalid" not in text.lower():
        err = StoreError(f"{url}: no credentials for the store; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                         f"(or AWS_PROFILE / ~/.aws/credentials; GOOGLE_APPLICATION_CREDENTIALS for gs://)")
    elif not _retryable(exc) and (isinstance(exc, PermissionError) or re.search(
            r"AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|\b403\b", text)):
        err = StoreError(f"{url}: the store refused access ({text[:100]}); check the credentials and the "
                         f"bucket's permissions")
    elif _retryable(exc):
        err = StoreError(f"{url}: the store is unreachable or failing{after} ({text[:100]}); check the URL, "
                         f"the network and AWS_ENDPOINT_URL, then run again")
    else:
        err = StoreError(f"{url}: cannot {what} ({name}: {text[:120]})")
    err.__context__ = exc
    return err
