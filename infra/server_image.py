"""The MLflow server image: an ECR repository and the image built from ``docker/Dockerfile``.

The build context is the repository root, narrowed by ``.dockerignore`` to ``IMAGE_SOURCES``:
the lock and entrypoint in ``docker/`` and the ``mlflow_aws`` package the image installs.

The helper runs exactly this image, pinned by digest (``image_uri``), so every teammate runs
the same server bits regardless of tags.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker as docker

from mlflow_aws import names

KEEP_IMAGES = 10  # enough to roll back a few releases
UNTAGGED_EXPIRY_DAYS = 3  # untagged layers from interrupted pushes


# What the image is built from, relative to the context (the repository root); .dockerignore
# admits exactly these (tests/test_dockerfile.py holds the two together).
IMAGE_SOURCES = (
    "docker/Dockerfile",
    "docker/requirements.txt",
    "docker/entrypoint.sh",
    "pyproject.toml",
    "mlflow_aws",
    "helper",
)


def image_files(context_dir: Path) -> list[Path]:
    """Every file the image is built from (caches skipped), sorted."""
    files: list[Path] = []
    for source in IMAGE_SOURCES:
        path = context_dir / source
        found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files += [f for f in found if "__pycache__" not in f.parts and f.suffix != ".pyc"]
    return sorted(files)


def context_digest(context_dir: Path) -> str:
    """A short hash of every file the image is built from (names and contents)."""
    digest = hashlib.sha256()
    for path in image_files(context_dir):
        digest.update(path.relative_to(context_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def repository_name(stack: str) -> str:
    return names.server_repository_name(stack)  # the helper checks a bundle's ImageUri by it


def lifecycle_policy() -> str:
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"expire untagged images after {UNTAGGED_EXPIRY_DAYS} days",
                    "selection": {
                        "tagStatus": "untagged",
                        "countType": "sinceImagePushed",
                        "countUnit": "days",
                        "countNumber": UNTAGGED_EXPIRY_DAYS,
                    },
                    "action": {"type": "expire"},
                },
                {
                    "rulePriority": 2,
                    "description": f"keep the {KEEP_IMAGES} most recent images",
                    "selection": {
                        "tagStatus": "any",
                        "countType": "imageCountMoreThan",
                        "countNumber": KEEP_IMAGES,
                    },
                    "action": {"type": "expire"},
                },
            ]
        }
    )


@dataclass
class ServerImageArgs:
    stack: str
    mlflow_version: str
    protect: bool  # keep the repository (and its images) when the stack is destroyed
    context_dir: Path  # the repository root (see IMAGE_SOURCES)
    platform: str = "linux/amd64"
    tags: Mapping[str, str] = field(default_factory=dict)


class ServerImage(pulumi.ComponentResource):
    repository_url: pulumi.Output[str]
    repository_arn: pulumi.Output[str]
    image_name: pulumi.Output[str]  # repository:tag, for people; machines use image_uri
    image_uri: pulumi.Output[str]  # <registry>/<repo>@sha256:<digest>

    def __init__(
        self, name: str, args: ServerImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlflow-aws:infra:ServerImage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {**args.tags, "mlflow-aws:component": "server-image"}

        repository = aws.ecr.Repository(
            f"{name}-repo",
            aws.ecr.RepositoryArgs(
                name=repository_name(args.stack),
                # Mutable tags, pinned digests. pulumi-docker rebuilds and pushes whenever its
                # context digest changes, and that digest covers file modes (another
                # deployer's umask or core.fileMode), where the tag hashes names and contents
                # only; an interrupted `pulumi up` pushes the same tag again too. An IMMUTABLE
                # repository refuses those pushes, even of identical bits, and the stack can no
                # longer deploy from that machine. Nothing runs an image by its tag: the helper,
                # the bundles and the tasks all use ImageUri, <repository>@sha256:<digest>.
                image_tag_mutability="MUTABLE",
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(
                    scan_on_push=True
                ),
                # AES256 for the same reason as the bucket: the AWS-managed KMS key adds cost,
                # not control.
                encryption_configurations=[
                    aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="AES256")
                ],
                force_delete=not args.protect,
                tags=tags,
            ),
            pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-lifecycle",
            aws.ecr.LifecyclePolicyArgs(repository=repository.name, policy=lifecycle_policy()),
            child,
        )

        token = aws.ecr.get_authorization_token_output(
            registry_id=repository.registry_id, opts=pulumi.InvokeOutputOptions(parent=self)
        )
        tag = f"{args.mlflow_version}-{context_digest(args.context_dir)}"
        # Paths relative to the project directory (Pulumi's working directory), so the
        # image's inputs do not change from one machine or checkout to the next.
        context = os.path.relpath(args.context_dir)
        image = docker.Image(
            f"{name}-image",
            docker.ImageArgs(
                image_name=pulumi.Output.concat(repository.repository_url, ":", tag),
                build=docker.DockerBuildArgs(
                    context=context,
                    dockerfile=os.path.join(context, "docker", "Dockerfile"),
                    platform=args.platform,
                    args={"MLFLOW_VERSION": args.mlflow_version},
                ),
                registry=docker.RegistryArgs(
                    server=repository.repository_url.apply(lambda url: url.split("/", 1)[0]),
                    username=token.user_name,
                    password=pulumi.Output.secret(token.password),
                ),
            ),
            child,
        )

        self.repository_url = repository.repository_url
        self.repository_arn = repository.arn
        self.image_name = image.image_name
        self.image_uri = pulumi.Output.all(repository.repository_url, image.repo_digest).apply(
            lambda values: pin_by_digest(values[0], values[1])
        )
        self.register_outputs(
            {
                "repository_url": self.repository_url,
                "repository_arn": self.repository_arn,
                "image_name": self.image_name,
                "image_uri": self.image_uri,
            }
        )


def pin_by_digest(repository_url: str, repo_digest: str) -> str:
    """``<repository_url>@sha256:…`` from pulumi-docker's ``repo_digest`` (``<repo>@sha256:…``)."""
    _, sep, digest = repo_digest.rpartition("@")
    if not sep or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ValueError(f"image was not pushed: unexpected repo digest {repo_digest!r}")
    return f"{repository_url}@{digest}"
