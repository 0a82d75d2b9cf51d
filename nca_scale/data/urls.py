"""Where shards live: a directory URL (local path, file://, s3://, memory://) and atomic writes into it.

Why not plain `fsspec.open` everywhere: the three backends differ in what "atomic" means. A local file is
written to a hidden temp name, fsynced and `os.replace`d (nca_scale.files); an S3 object is uploaded in one PUT (or one
completed multipart upload), which S3 publishes all at once; `memory://` (tests) writes a temp key and moves
it. In every case a reader never sees part of an object under its final name. A failed write (a flaky
network, a full disk) is retried with exponential backoff (`RETRIES`, `BACKOFF_S`), then reported as one line.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import fsspec
from fsspec.core import split_protocol

from nca_scale.errors import UserError
from nca_scale.files import TEMP_MARK, temp_name, write_atomic

SCHEMES = ("file", "s3", "memory")  # plain paths count as file; temp objects (files.TEMP_MARK) are never listed
RETRIES = 4  # attempts per object write
BACKOFF_S = 0.5  # wait before the 2nd attempt; doubles after each failure


def endpoint_from_env() -> str | None:
    """S3-compatible endpoint (MinIO, moto, ...) from the standard AWS variables, if set."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError")
_UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ProxyConnectionError")
_REJECTED = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")


def access_problem(e: BaseException) -> str | None:
    """One line for an error that means "this S3 store cannot be used as configured" (no or rejected
    credentials, an unreachable endpoint), found anywhere in the exception's chain; None for any other error."""
    endpoint = endpoint_from_env()
    fix = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for an "
           "S3-compatible store (MinIO, Ceph, ...)")
    seen: BaseException | None = e
    while seen is not None:
        name, text = type(seen).__name__, str(seen)
        if name in _NO_CREDENTIALS:
            return f"no S3 credentials found: {fix}"
        if name in _UNREACHABLE:
            where = f"AWS_ENDPOINT_URL={endpoint}" if endpoint else "AWS itself (AWS_ENDPOINT_URL is not set)"
            return f"cannot reach the S3 endpoint ({where}): check AWS_ENDPOINT_URL and the network"
        if any(code in text for code in _REJECTED):
            return f"the S3 store rejected the credentials ({_first_line(seen)}): {fix}"
        seen = seen.__cause__ or seen.__context__
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


@dataclass
class Location:
    """A directory of objects on one filesystem. `root` is the fsspec path (no scheme)."""

    url: str
    scheme: str
    fs: fsspec.AbstractFileSystem
    root: str

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def url_of(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    # ---- reading -------------------------------------------------------------------------------------
    def size(self, name: str) -> int | None:
        try:
            return int(self.fs.size(self.path(name)))
        except FileNotFoundError:
            return None

    def names(self) -> set[str]:
        """Names of the objects directly in the directory (one listing, not one request per object)."""
        self.fs.invalidate_cache(self.root)  # s3fs caches listings; another process may have written since
        try:
            return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)}
        except FileNotFoundError:
            return set()

    def read(self, name: str) -> bytes:
        return self.fs.cat_file(self.path(name))

    # ---- writing -------------------------------------------------------------------------------------
    def sub(self, name: str) -> Location:
        """The directory `name` inside this one."""
        return Location(url=self.url_of(name), scheme=self.scheme, fs=self.fs, root=self.path(name))

    def put_atomic(self, name: str, data: bytes) -> None:
        """Publish `data` under `name` (which may contain `/`) all at once: no reader ever sees a partial
        object there. Failed attempts are retried with backoff; after the last one, a UserError."""
        if "/" in name:
            directory, _, name = name.rpartition("/")
            return self.sub(directory).put_atomic(name, data)
        delay = BACKOFF_S
        for attempt in range(1, RETRIES + 1):
            try:
                return self._put_once(name, data)
            except OSError as e:  # s3fs reports S3 and network errors as OSError subclasses too
                if attempt == RETRIES:
                    raise UserError(f"writing {self.url_of(name)} failed {RETRIES} times ({_first_line(e)}); "
                                    "nothing was published under that name") from None
                time.sleep(delay)
                delay *= 2

    def _put_once(self, name: str, data: bytes) -> None:
        final = self.path(name)
        if self.scheme == "s3":
            # s3fs uploads up to its 50 MiB chunk size as one PUT and larger data as one multipart upload;
            # both become visible only when complete.
            self.fs.pipe_file(final, data)
            return
        if self.scheme == "file":
            os.makedirs(self.root, exist_ok=True)
            write_atomic(final, data)
            return
        tmp = self.path(temp_name(name).name)
        try:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, final)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm_file(tmp)
            raise

    def remove_stale_temps(self) -> int:
        """Delete temp objects a killed writer left behind (one writer per directory is assumed)."""
        if self.scheme == "s3":
            return 0  # S3 writes never go through temp keys
        stale = [n for n in self.names() if n.startswith(".") and TEMP_MARK in n]
        for name in stale:
            self.fs.rm_file(self.path(name))
        return len(stale)

    def check_writable(self, what: str = "out") -> None:
        """Create the directory if needed and prove we can write there, before any shard is generated.
        `what` names the argument in errors."""
        probe = temp_name("nca-scale-probe").name
        try:
            if self.scheme == "file":
                os.makedirs(self.root, exist_ok=True)
                if not os.path.isdir(self.root):
                    raise NotADirectoryError(f"{self.root} is not a directory")
            self.fs.pipe_file(self.path(probe), b"")
            self.fs.rm_file(self.path(probe))
        except Exception as e:  # OSError, botocore errors, ...: all mean "cannot write here"
            problem = access_problem(e) if self.scheme == "s3" else None
            if problem is None and self.scheme == "s3" and "NoSuchBucket" in f"{e!r} {e.__cause__!r}":
                problem = f"bucket {self.root.split('/', 1)[0]!r} does not exist; create it first"
            raise UserError(f"{what}={self.url} is not writable: {problem or _first_line(e)}") from None


def register_gopen(endpoint_url: str | None = None) -> None:
    """Let plain `webdataset.WebDataset(url)` open s3:// and memory:// shards through fsspec.

    webdataset has no handler for these schemes ("no gopen handler defined"); this adds one to its global
    dispatch table (`webdataset.gopen.gopen_schemes`, reached through sys.modules because `wds.gopen` is the
    function). Plain WebDataset does not check checksums: `ShardReader` does.
    """
    import sys

    import webdataset  # noqa: F401 - loads webdataset.gopen

    def gopen_fsspec(url, mode="rb", bufsize=8192, **kw):
        directory, _, name = url.rpartition("/")
        loc = parse_location(directory, endpoint_url, what="shard")
        return loc.fs.open(loc.path(name), mode)

    schemes = sys.modules["webdataset.gopen"].gopen_schemes
    schemes["s3"] = schemes["memory"] = gopen_fsspec


def parse_location(url: str, endpoint_url: str | None = None, *, what: str = "out") -> Location:
    """Check the URL's form (no I/O) and bind it to a filesystem. `what` names the argument in errors."""
    url = (url or "").strip()
    if not url:
        raise UserError(f"{what}= is empty; give a directory: a path, file:///abs/dir, s3://bucket/prefix or memory://name")
    scheme, path = split_protocol(url)
    scheme = scheme or "file"
    if scheme not in SCHEMES:
        raise UserError(
            f"{what}={url}: unsupported URL scheme {scheme!r}; use a local path, file://, s3:// or memory://"
        )
    path = path.rstrip("/")
    if scheme == "file":
        if not path:
            raise UserError(f"{what}={url}: no directory given after file://")
        root = os.path.abspath(os.path.expanduser(path))
        return Location(url=f"file://{root}", scheme="file", fs=fsspec.filesystem("file"), root=root)
    if scheme == "memory":
        if not path.strip("/"):
            raise UserError(f"{what}={url}: give a name after memory://, e.g. memory://shards")
        fs = fsspec.filesystem("memory")
        return Location(url=f"memory://{path.lstrip('/')}", scheme="memory", fs=fs, root=fs._strip_protocol(url))
    bucket = path.split("/", 1)[0]
    if not bucket:
        raise UserError(f"{what}={url}: no bucket given; write s3://bucket/prefix")
    endpoint_url = endpoint_url or endpoint_from_env()
    options = {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}
    try:
        fs = fsspec.filesystem("s3", **options)
    except ImportError:
        raise UserError("s3:// needs the s3fs package (pip install s3fs)") from None
    return Location(url=f"s3://{path}", scheme="s3", fs=fs, root=path)
