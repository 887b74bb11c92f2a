"""The artifacts gc may delete: only under the project's root, only where MLflow put them.

A run's, logged model's or trace's artifact URI comes from the database, where a client can
shape it (an experiment's ``artifact_location`` is the client's choice). So before anything is
listed or deleted, its URI must

* resolve inside the project's root (``s3://<bucket>/<project>/`` or the local store's
  artifact directory): ``mlflow-artifacts:`` URIs (proxied, as the servers store them) are
  resolved against that root, ``s3://`` URIs must name the root's bucket and prefix, no ``..``;
* end the way MLflow builds it for that entity (``<id>/artifacts`` for a run,
  ``models/<id>/artifacts`` for a logged model, ``traces/<id>/artifacts`` for a trace; an
  experiment's directory is swept only when it is MLflow's default, ``<root>/<id>``), so a
  crafted location can never widen a deletion to a parent directory, another run or the
  whole project.

Listing always ends the prefix with ``/``: run ``1/ab`` never matches ``1/abc``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

S3_DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys


@dataclass(frozen=True)
class StoredObject:
    key: str  # relative to the store's root
    size: int


class ArtifactStore(Protocol):
    description: str  # where the root is, for messages (no credentials)

    def relative(self, uri: str) -> str | None:
        """``uri`` as a path below the root (no leading or trailing ``/``), or None when
        it points anywhere else."""

    def pages(self, prefix: str) -> Iterator[list[StoredObject]]:
        """The objects under ``prefix/``, a page at a time (bounded memory)."""

    def delete(self, objects: list[StoredObject]) -> None: ...


def _clean_relative(path: str) -> str | None:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or any("\\" in p or "\0" in p for p in parts):
        return None
    return "/".join(parts)


def _mlflow_artifacts_path(uri: str) -> str | None:
    """The path of ``mlflow-artifacts:/p``, ``mlflow-artifacts:///p`` or
    ``mlflow-artifacts://host:port/p`` (the server resolves each against its destination)."""
    parsed = urlparse(uri)
    if parsed.scheme != "mlflow-artifacts" or parsed.query or parsed.fragment:
        return None
    return _clean_relative(unquote(parsed.path))


def expected_suffix(kind: str, entity_id: str) -> str:
    """How MLflow ends the artifact path of each kind of entity."""
    return {
        "run": f"{entity_id}/artifacts",
        "logged model": f"models/{entity_id}/artifacts",
        "trace": f"traces/{entity_id}/artifacts",
        "experiment": entity_id,
    }[kind]


def owned_prefix(store: ArtifactStore, uri: str | None, kind: str, entity_id: str) -> str | None:
    """The prefix gc may delete for this entity, or None (outside the root, or not shaped as
    MLflow makes it: then nothing is deleted there)."""
    if not uri:
        return None
    relative = store.relative(uri)
    if relative is None:
        return None
    suffix = expected_suffix(kind, entity_id)
    if kind == "experiment":  # only MLflow's default location, <root>/<id>, is swept whole
        return relative if relative == suffix else None
    if relative != suffix and not relative.endswith("/" + suffix):
        return None
    return relative


class S3Store:
    """``s3://<bucket>/<root>/``, with a client holding the project's server role."""

    def __init__(self, client: Any, root_uri: str) -> None:
        parsed = urlparse(root_uri)
        root = _clean_relative(parsed.path)
        if parsed.scheme != "s3" or not parsed.netloc or root is None:
            raise ValueError(f"the artifact root must be s3://<bucket>/<prefix>, got {root_uri}")
        self.client = client
        self.bucket = parsed.netloc
        self.root = root
        self.description = f"s3://{self.bucket}/{self.root}/"

    def relative(self, uri: str) -> str | None:
        if uri.startswith("mlflow-artifacts:"):
            return _mlflow_artifacts_path(uri)
        parsed = urlparse(uri)
        if parsed.scheme not in ("s3", "s3a") or parsed.netloc != self.bucket:
            return None
        key = _clean_relative(unquote(parsed.path))
        if key is None or not key.startswith(self.root + "/"):
            return None
        return key[len(self.root) + 1 :]

    def pages(self, prefix: str) -> Iterator[list[StoredObject]]:
        paginator = self.client.get_paginator("list_objects_v2")
        start = f"{self.root}/{prefix}/"
        for page in paginator.paginate(
            Bucket=self.bucket, Prefix=start, PaginationConfig={"PageSize": S3_DELETE_BATCH}
        ):
            found = [
                StoredObject(item["Key"][len(self.root) + 1 :], int(item["Size"]))
                for item in page.get("Contents", [])
            ]
            if found:
                yield found

    def delete(self, objects: list[StoredObject]) -> None:
        for start in range(0, len(objects), S3_DELETE_BATCH):
            chunk = objects[start : start + S3_DELETE_BATCH]
            answer = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": f"{self.root}/{o.key}"} for o in chunk], "Quiet": True},
            )
            errors = answer.get("Errors") or []
            if (
                errors
                and len(errors) == len(chunk)
                and all(e.get("Code") == "AccessDenied" for e in errors)
            ):
                # AWS authorizes DeleteObjects as s3:DeleteObject on each key (the DeleteObjects
                # API reference), which the server role has under its prefix; some S3 look-alikes
                # (moto among them) authorize it as a bucket-wide action instead. One request
                # per key then, each authorized on its own.
                for stored in chunk:
                    self._delete_one(f"{self.root}/{stored.key}")
            elif errors:
                raise _refused(errors)

    def _delete_one(self, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise _refused([{"Key": key, **error}]) from None


def _refused(errors: list[dict[str, Any]]) -> PermissionError:
    first = errors[0]
    return PermissionError(
        f"S3 refused to delete {len(errors)} object(s), e.g. {first.get('Key')}: "
        f"{first.get('Code')} {first.get('Message', '')}".strip()
    )


class LocalStore:
    """The embedded default's artifact directory (``serve --local``)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.description = str(self.root)

    def relative(self, uri: str) -> str | None:
        if uri.startswith("mlflow-artifacts:"):
            return _mlflow_artifacts_path(uri)
        parsed = urlparse(uri)
        if parsed.scheme not in ("", "file") or (parsed.scheme == "file" and parsed.netloc):
            return None
        path = Path(unquote(parsed.path))
        if not path.is_absolute():
            return None
        try:
            inside = path.resolve().relative_to(self.root)
        except ValueError:
            return None
        return _clean_relative(inside.as_posix())

    def pages(self, prefix: str) -> Iterator[list[StoredObject]]:
        base = self.root / prefix
        if base.is_symlink() or not base.is_dir():
            return
        page: list[StoredObject] = []
        for directory, _, files in os.walk(base):  # os.walk does not follow symlinks
            for name in files:
                path = Path(directory) / name
                with contextlib.suppress(OSError):
                    size = path.lstat().st_size
                    page.append(StoredObject(path.relative_to(self.root).as_posix(), size))
                if len(page) >= S3_DELETE_BATCH:
                    yield page
                    page = []
        if page:
            yield page

    def delete(self, objects: list[StoredObject]) -> None:
        parents = set()
        for stored in objects:
            path = self.root / stored.key
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            parents.add(path.parent)
        # Empty directories left behind, up to (not including) the root.
        for directory in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            current = directory
            while current != self.root and self.root in current.parents:
                try:
                    current.rmdir()
                except OSError:
                    break
                current = current.parent
