"""Results on shared storage: a results directory given as an object-store URI (Ray's ``storage_path`` convention).

Ray Tune writes its experiment state and every trial's checkpoint (the adapter) straight to the URI, from whichever
node ran the trial. The driver's own files (config, trials table, Optuna's SQLite study, run facts, report) are
written in a local staging copy, since SQLite cannot live on an object store, and mirrored to the URI after every
trial and at the end. ``report``, ``best`` and ``show`` read a URI by fetching those files (and, for ``best
--export``, the chosen adapter) through the same pyarrow filesystem.

Anything pyarrow can open works: ``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, with the query parameters pyarrow
takes (``s3://bucket/path?endpoint_override=host:port&scheme=http`` for MinIO and other S3-compatible stores).
Credentials come from the environment (``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...), never from the URI.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from peft_search.search.errors import ConfigError
from peft_search.search.results.layout import TRAIN_DIR, TUNE_DIR

SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")


def is_uri(value: str | os.PathLike) -> bool:
    return "://" in str(value)


def join(uri: str, *parts: str) -> str:
    """``uri`` with path parts appended before its query string."""
    s = urlsplit(uri)
    path = "/".join([s.path.rstrip("/"), *(p.strip("/") for p in parts)])
    return urlunsplit((s.scheme, s.netloc, path, s.query, ""))


def filesystem(uri: str):
    """The pyarrow filesystem of ``uri`` and the path inside it; a one-line error when it cannot be opened."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError and others
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"results_dir: cannot open {redacted(uri)} ({first})") from None


def redacted(uri: str) -> str:
    """The URI as it can be printed: without its query string (which may carry endpoint details)."""
    s = urlsplit(uri)
    return urlunsplit((s.scheme, s.netloc.rpartition("@")[2], s.path, "", ""))


def staging_dir(uri: str) -> Path:
    """The local copy of a remote search's driver files (``PEFT_SEARCH_STAGING`` or the temp directory)."""
    root = Path(os.environ.get("PEFT_SEARCH_STAGING") or Path(tempfile.gettempdir()) / "peft-search-staging")
    key = hashlib.sha1(uri.encode()).hexdigest()[:12]
    return root / key / Path(urlsplit(uri).path).name


def exists(uri: str, name: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(f"{path}/{name}").type != pafs.FileType.NotFound


def upload(local_dir: Path, uri: str, names: list[str] | None = None) -> None:
    """Copy ``names`` (default: everything) from ``local_dir`` to the search's URI."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    local = pafs.LocalFileSystem()
    for name in names if names is not None else sorted(p.name for p in local_dir.iterdir()):
        source = local_dir / name
        if not source.exists():
            continue
        pafs.copy_files(str(source), f"{path}/{name}", source_filesystem=local, destination_filesystem=fs)


def download(uri: str, local_dir: Path, *, skip: tuple[str, ...] = (TUNE_DIR, TRAIN_DIR)) -> Path:
    """Fetch a remote search's files (not Tune's state nor the adapters, unless asked) into ``local_dir``."""
    fs, path = filesystem(uri)
    if not _copy_tree(fs, path, local_dir, skip):
        raise ConfigError(f"results_dir: no search at {redacted(uri)}; check the URI (RESULTS_DIR/NAME)")
    return local_dir


def download_tree(uri: str, local_dir: Path) -> int:
    """Every file under ``uri`` (e.g. a search's ``tune/``) into ``local_dir``; how many."""
    fs, path = filesystem(uri)
    return _copy_tree(fs, path, local_dir)


def sync_back(local_dir: Path, uri: str, names: list[str]) -> None:
    """Make ``names`` under ``uri`` what they are in ``local_dir``: copied where they exist there, deleted where
    they do not."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    local = pafs.LocalFileSystem()
    for name in names:
        source = local_dir / name
        if source.exists():
            pafs.copy_files(str(source), f"{path}/{name}", source_filesystem=local, destination_filesystem=fs)
        elif fs.get_file_info(f"{path}/{name}").type != pafs.FileType.NotFound:
            fs.delete_file(f"{path}/{name}")


def _copy_tree(fs, path: str, local_dir: Path, skip: tuple[str, ...] = ()) -> int:
    """Copy every file under ``path`` in ``fs`` to ``local_dir`` (but top-level entries in ``skip``); how many."""
    import pyarrow.fs as pafs

    local, copied = pafs.LocalFileSystem(), 0
    local_dir.mkdir(parents=True, exist_ok=True)
    for entry in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        relative = entry.path[len(path) :].lstrip("/")
        if entry.type != pafs.FileType.File or relative.split("/")[0] in skip:
            continue
        (local_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            entry.path, str(local_dir / relative), source_filesystem=fs, destination_filesystem=local
        )
        copied += 1
    return copied


def put_dir(local_dir: str | Path, uri: str, name: str) -> str:
    """Copy a local directory to ``name`` under ``uri``, replacing what is there; returns its path in the store's
    filesystem (the form Ray Train gives a checkpoint's path)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    target = f"{path}/{name}"
    fs.delete_dir_contents(target, missing_dir_ok=True)
    pafs.copy_files(
        str(local_dir), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )
    return target


def remove_dir(uri: str, name: str) -> None:
    """Remove the directory ``name`` under ``uri`` and all it holds (nothing to do when it is not there)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(f"{path}/{name}").type != pafs.FileType.NotFound:
        fs.delete_dir(f"{path}/{name}")


def fetch_adapter(uri: str, relative: str, dest: Path) -> Path:
    """Copy one of the search's checkpoints (``relative``: its path in the search, ``train/train-ID/...``) from the
    search's URI, wherever the search now lives, to ``dest``."""
    fs, path = filesystem(uri)
    if not _copy_tree(fs, f"{path}/{relative}", dest):
        raise ConfigError(f"adapter_path: nothing at {relative} in {redacted(uri)}")
    return dest


class Mirror:
    """Uploads some of a staging directory's files to the search's URI when called (picklable, unlike a closure:
    Tune saves its callbacks with the experiment)."""

    def __init__(self, local_dir: Path, uri: str, names: list[str]) -> None:
        self.local_dir, self.uri, self.names = Path(local_dir), uri, names

    def __call__(self) -> None:
        upload(self.local_dir, self.uri, self.names)
