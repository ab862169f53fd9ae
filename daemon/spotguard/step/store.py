"""Where checkpoints live: one folder (or blob prefix) per step, addressed by an fsspec-style URL.

Three backends share one small interface (:class:`Store`), so the checkpoint logic is written once:

- local paths, ``file://`` URLs and volumes mounted from a PVC (:class:`LocalStore`): stdlib only.
  Every write goes to a temporary file that is fsynced and then renamed into place, so a name
  never holds half a file; create-only writes and compare-and-swap of the pointer run under an
  ``flock`` on ``<folder>/.lock``, so writers in several processes (or pods sharing a
  ReadWriteMany volume whose filesystem honours ``flock``) never overwrite each other.
- Azure Blob Storage, ``abfs://container/path``, ``abfss://``, ``az://`` and
  ``abfs://container@account.dfs.core.windows.net/path`` (:class:`BlobStore`): the
  azure-storage-blob client (adlfs brings it), imported only for these URLs. A blob upload
  commits whole or not at all; create-only is ``If-None-Match: *`` and the pointer's
  compare-and-swap is ``If-Match: <etag>``.
- any other fsspec protocol (``memory://``, ``gs://``, ...; :class:`FsspecStore`): best effort.
  fsspec has no create-only or conditional write, so concurrent writers are not detected there;
  restore still verifies every checkpoint's hash, so a torn one is never used.

Every network call has an explicit timeout, and retries are few and short: a preemption notice
is 30 s at best, and the SDK's default storage retry waits 15 s before its first retry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from spotguard.step.errors import AlreadyExists, ConditionFailed, SettingError, StoreError

#: seconds to open a connection to Blob Storage, and to wait for each read on it
BLOB_CONNECT_TIMEOUT = 5.0
BLOB_READ_TIMEOUT = 20.0
#: server-side timeout of each Blob operation, seconds
BLOB_OPERATION_TIMEOUT = 20
#: temporary files older than this (seconds) are left-overs of a killed writer
STALE_TEMPORARY_AGE = 600.0


class Store(Protocol):
    """A flat folder of named objects with create-only and compare-and-swap writes."""

    url: str

    def read(self, name: str) -> bytes | None:
        """The object's bytes, or None when there is no such object."""
        ...

    def read_tagged(self, name: str) -> tuple[bytes, str] | None:
        """The bytes and a tag that changes whenever the object is rewritten, or None."""
        ...

    def create(self, name: str, data: bytes) -> None:
        """Write a new object; AlreadyExists when the name is taken (nothing is overwritten)."""
        ...

    def swap(self, name: str, data: bytes, tag: str | None) -> None:
        """Replace the object if it still has ``tag`` (or, with None, if it does not exist yet);
        ConditionFailed otherwise."""
        ...

    def names(self) -> list[str]:
        """Names of the objects in this folder (temporary files excluded)."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object; a missing one is fine."""
        ...

    def locate(self, name: str) -> str:
        """The object's URL or path, as reported to the agent and in logs."""
        ...

    def sweep(self) -> None:
        """Remove left-overs of writers that were killed mid-write (best effort)."""
        ...

    def close(self) -> None: ...


def open_store(url: str, **options: Any) -> Store:
    """The store for ``url``. ``options`` go to the backend (e.g. ``connection_string=``)."""
    if not url:
        raise SettingError("the checkpoint location is empty")
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("", "file", "local") or (len(scheme) == 1 and os.name == "nt"):
        return LocalStore(_local_path(url), **options)
    if scheme in ("abfs", "abfss", "az"):
        return BlobStore.from_url(url, **options)
    return FsspecStore(url, **options)


def _local_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme.lower() in ("file", "local"):
        if parts.netloc not in ("", "localhost"):
            raise SettingError(f"{url!r}: a file:// URL names no host (use file:///path)")
        return Path(unquote(parts.path))
    return Path(url)


def _check_name(name: str) -> None:
    # Names come from this package only; refusing anything path-like keeps a bug from escaping
    # the checkpoint folder.
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"invalid object name {name!r}")


class LocalStore:
    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self._fsync = fsync
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create checkpoint folder {self.root}: {exc}") from exc

    def read(self, name: str) -> bytes | None:
        _check_name(name)
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.root / name}: {exc}") from exc

    def read_tagged(self, name: str) -> tuple[bytes, str] | None:
        data = self.read(name)
        # The content hash is an exact tag: no mtime granularity or inode reuse to worry about.
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def create(self, name: str, data: bytes) -> None:
        _check_name(name)
        tmp = self._write_temporary(data)
        try:
            with self._locked():
                if (self.root / name).exists():
                    raise AlreadyExists(f"{self.root / name} exists")
                os.replace(tmp, self.root / name)
                self._sync_folder()
        finally:
            tmp.unlink(missing_ok=True)

    def swap(self, name: str, data: bytes, tag: str | None) -> None:
        _check_name(name)
        tmp = self._write_temporary(data)
        try:
            with self._locked():
                current = self.read_tagged(name)
                current_tag = None if current is None else current[1]
                if current_tag != tag:
                    raise ConditionFailed(f"{self.root / name} changed under this writer")
                os.replace(tmp, self.root / name)
                self._sync_folder()
        finally:
            tmp.unlink(missing_ok=True)

    def names(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.root) if not n.startswith(".")]
        except OSError as exc:
            raise StoreError(f"cannot list {self.root}: {exc}") from exc

    def delete(self, name: str) -> None:
        _check_name(name)
        try:
            (self.root / name).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {self.root / name}: {exc}") from exc

    def locate(self, name: str) -> str:
        return str(self.root / name)

    def sweep(self) -> None:
        cutoff = time.time() - STALE_TEMPORARY_AGE
        with contextlib.suppress(OSError), os.scandir(self.root) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):  # another writer may remove it first
                    if entry.name.startswith(".tmp-") and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)

    def close(self) -> None:
        pass

    def _write_temporary(self, data: bytes) -> Path:
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    # Durable before the rename: the node itself is about to disappear.
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write in {self.root}: {exc}") from exc
        return tmp

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open {self.root / '.lock'}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _sync_folder(self) -> None:
        if not self._fsync:
            return
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass  # some filesystems (and all of Windows) cannot fsync a folder
        finally:
            os.close(fd)


class BlobStore:
    """A prefix in an Azure Blob container, through the synchronous azure-storage-blob client."""

    def __init__(self, container: Any, prefix: str, url: str) -> None:
        self._container = container
        self._prefix = prefix.strip("/")
        self.url = url

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        connection_string: str | None = None,
        account_key: str | None = None,
        sas_token: str | None = None,
        credential: Any = None,
        environ: dict[str, str] | None = None,
    ) -> BlobStore:
        """Credentials, first found wins: the arguments; ``SPOTGUARD_CHECKPOINT_CONNECTION_STRING``
        or ``AZURE_STORAGE_CONNECTION_STRING``; the account (from the URL or
        ``AZURE_STORAGE_ACCOUNT_NAME``) with ``AZURE_STORAGE_ACCOUNT_KEY`` or
        ``AZURE_STORAGE_SAS_TOKEN``; workload identity (``AZURE_FEDERATED_TOKEN_FILE``,
        ``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``). Never ``DefaultAzureCredential``: its probes
        (IMDS, the CLI, ...) are slow and reach far beyond the storage account."""
        env = dict(os.environ if environ is None else environ)
        parts = urlsplit(url)
        container_name, _, account_host = parts.netloc.partition("@")
        if not container_name:
            raise SettingError(f"{url!r}: no container (use abfs://<container>/<path>)")
        account = account_host.split(".", 1)[0] or env.get("AZURE_STORAGE_ACCOUNT_NAME", "")
        prefix = unquote(parts.path)

        try:
            from azure.storage.blob import ContainerClient, LinearRetry
        except ImportError as exc:
            raise SettingError(
                f"{url!r} needs azure-storage-blob: pip install adlfs (or azure-storage-blob)"
            ) from exc

        options: dict[str, Any] = {
            "connection_timeout": BLOB_CONNECT_TIMEOUT,
            "read_timeout": BLOB_READ_TIMEOUT,
            # Two quick retries: the default storage policy first waits 15 s.
            "retry_policy": LinearRetry(backoff=1, retry_total=2, random_jitter_range=1),
            "max_single_put_size": 256 * 1024 * 1024,
        }
        conn = (
            connection_string
            or env.get("SPOTGUARD_CHECKPOINT_CONNECTION_STRING")
            or env.get("AZURE_STORAGE_CONNECTION_STRING")
        )
        if conn and credential is None and account_key is None and sas_token is None:
            client = ContainerClient.from_connection_string(conn, container_name, **options)
            return cls(client, prefix, url)
        if not account:
            raise SettingError(
                f"{url!r}: no storage account (abfs://<container>@<account>.dfs.core.windows.net/"
                "<path>, or AZURE_STORAGE_ACCOUNT_NAME) and no connection string"
            )
        cred: Any = credential
        if cred is None:
            cred = account_key or env.get("AZURE_STORAGE_ACCOUNT_KEY")
            if cred:
                cred = {"account_name": account, "account_key": cred}
        if cred is None:
            cred = sas_token or env.get("AZURE_STORAGE_SAS_TOKEN") or None
        if cred is None and env.get("AZURE_FEDERATED_TOKEN_FILE"):
            try:
                from azure.identity import WorkloadIdentityCredential
            except ImportError as exc:
                raise SettingError(
                    "workload identity needs azure-identity (adlfs brings it)"
                ) from exc
            cred = WorkloadIdentityCredential(
                tenant_id=env.get("AZURE_TENANT_ID"),
                client_id=env.get("AZURE_CLIENT_ID"),
                token_file_path=env["AZURE_FEDERATED_TOKEN_FILE"],
            )
        if cred is None:
            raise SettingError(
                f"{url!r}: no credentials (a connection string, AZURE_STORAGE_ACCOUNT_KEY, "
                "AZURE_STORAGE_SAS_TOKEN or workload identity; "
                "DefaultAzureCredential is never used)"
            )
        account_url = f"https://{account}.blob.core.windows.net"
        client = ContainerClient(account_url, container_name, credential=cred, **options)
        return cls(client, prefix, url)

    def _blob(self, name: str) -> str:
        _check_name(name)
        return f"{self._prefix}/{name}" if self._prefix else name

    def read(self, name: str) -> bytes | None:
        got = self.read_tagged(name)
        return None if got is None else got[0]

    def read_tagged(self, name: str) -> tuple[bytes, str] | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            downloader = self._container.download_blob(
                self._blob(name), timeout=BLOB_OPERATION_TIMEOUT
            )
            data: bytes = downloader.readall()
            etag: str = downloader.properties.etag
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StoreError(f"cannot read {self.locate(name)}: {_azure_reason(exc)}") from exc
        return data, etag

    def create(self, name: str, data: bytes) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError

        try:
            # overwrite=False sends If-None-Match: * on the upload (and on a block list commit).
            self._container.upload_blob(
                self._blob(name), data, overwrite=False, timeout=BLOB_OPERATION_TIMEOUT
            )
        except ResourceExistsError as exc:
            raise AlreadyExists(f"{self.locate(name)} exists") from exc
        except AzureError as exc:
            raise StoreError(f"cannot write {self.locate(name)}: {_azure_reason(exc)}") from exc

    def swap(self, name: str, data: bytes, tag: str | None) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError

        try:
            if tag is None:
                self._container.upload_blob(
                    self._blob(name), data, overwrite=False, timeout=BLOB_OPERATION_TIMEOUT
                )
            else:
                self._container.upload_blob(
                    self._blob(name),
                    data,
                    overwrite=True,
                    etag=tag,
                    match_condition=MatchConditions.IfNotModified,
                    timeout=BLOB_OPERATION_TIMEOUT,
                )
        except (ResourceExistsError, ResourceModifiedError) as exc:
            raise ConditionFailed(f"{self.locate(name)} changed under this writer") from exc
        except AzureError as exc:
            raise StoreError(f"cannot write {self.locate(name)}: {_azure_reason(exc)}") from exc

    def names(self) -> list[str]:
        from azure.core.exceptions import AzureError

        start = f"{self._prefix}/" if self._prefix else ""
        try:
            blobs = self._container.list_blobs(
                name_starts_with=start, timeout=BLOB_OPERATION_TIMEOUT
            )
            found = [str(b.name)[len(start) :] for b in blobs]
        except AzureError as exc:
            raise StoreError(f"cannot list {self.url}: {_azure_reason(exc)}") from exc
        return [n for n in found if n and "/" not in n]

    def delete(self, name: str) -> None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            self._container.delete_blob(self._blob(name), timeout=BLOB_OPERATION_TIMEOUT)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise StoreError(f"cannot delete {self.locate(name)}: {_azure_reason(exc)}") from exc

    def locate(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def sweep(self) -> None:
        pass  # an upload that never committed leaves nothing visible behind

    def close(self) -> None:
        self._container.close()


def _azure_reason(exc: Exception) -> str:
    code = getattr(exc, "error_code", None)
    status = getattr(exc, "status_code", None)
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return " ".join(str(p) for p in (status, code, first_line) if p)


class FsspecStore:
    """Any other fsspec filesystem. No create-only or conditional writes exist in fsspec's API, so
    this backend assumes one writer at a time (see the module docstring)."""

    def __init__(self, url: str, **options: Any) -> None:
        try:
            import fsspec  # type: ignore[import-untyped,unused-ignore]
        except ImportError as exc:
            raise SettingError(f"{url!r} needs fsspec: pip install fsspec") from exc
        try:
            self._fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            raise SettingError(f"{url!r}: {exc}") from exc
        self._root = str(root).rstrip("/")
        self.url = url
        with contextlib.suppress(Exception):
            self._fs.makedirs(self._root, exist_ok=True)

    def _path(self, name: str) -> str:
        _check_name(name)
        return f"{self._root}/{name}"

    def read(self, name: str) -> bytes | None:
        try:
            data: bytes = self._fs.cat_file(self._path(name))
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise StoreError(f"cannot read {self.locate(name)}: {exc}") from exc
        return data

    def read_tagged(self, name: str) -> tuple[bytes, str] | None:
        data = self.read(name)
        return None if data is None else (data, hashlib.sha256(data).hexdigest())

    def create(self, name: str, data: bytes) -> None:
        if self.read(name) is not None:
            raise AlreadyExists(f"{self.locate(name)} exists")
        self._put(name, data)

    def swap(self, name: str, data: bytes, tag: str | None) -> None:
        current = self.read_tagged(name)
        if (None if current is None else current[1]) != tag:
            raise ConditionFailed(f"{self.locate(name)} changed under this writer")
        self._put(name, data)

    def _put(self, name: str, data: bytes) -> None:
        try:
            self._fs.pipe_file(self._path(name), data)
        except Exception as exc:
            raise StoreError(f"cannot write {self.locate(name)}: {exc}") from exc

    def names(self) -> list[str]:
        try:
            entries = self._fs.ls(self._root, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StoreError(f"cannot list {self.url}: {exc}") from exc
        return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def delete(self, name: str) -> None:
        try:
            self._fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StoreError(f"cannot delete {self.locate(name)}: {exc}") from exc

    def locate(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def sweep(self) -> None:
        pass

    def close(self) -> None:
        pass
