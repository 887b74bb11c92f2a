"""The server image can always be pushed again under its tag (issue 15, finding 3).

pulumi-docker rebuilds and pushes whenever its context digest changes, and that digest covers
file modes (another deployer's umask, ``core.fileMode``), while the tag (``<mlflow>-<hash of
names and contents>``) does not; an interrupted ``pulumi up`` that pushed but did not record
the image pushes the same tag again as well. ECR refuses a push of an existing tag into an
IMMUTABLE repository, even of identical bits, so such a stack could no longer deploy from
that machine. Here the repository is created in moto with the inputs the program registers
and both pushes are made; consumers pin the image by digest, which stays exact.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.server_image import IMAGE_SOURCES, context_digest, image_files
from tests.support.pulumi_mocks import REGION, run_program

ROOT = Path(__file__).resolve().parent.parent


def manifest(layer: str) -> str:
    """A docker image manifest whose one layer stands for the build context's tarball."""
    digest = "sha256:" + hashlib.sha256(layer.encode()).hexdigest()
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1,
                   "digest": "sha256:" + hashlib.sha256(f"config {layer}".encode()).hexdigest()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer), "digest": digest}],
    })  # fmt: skip


def docker_push(ecr: Any, repository: str, tag: str, body: str) -> None:
    """What ``docker push`` amounts to at ECR: the registry refuses an existing tag of an
    IMMUTABLE repository, identical or not (ECR user guide, image tag mutability), accepts an
    identical manifest again as a no-op, and moves a mutable tag to a new manifest."""
    settings = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
    try:
        current = ecr.batch_get_image(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ecr.exceptions.ImageNotFoundException:
        current = {"images": []}
    if current["images"]:
        if settings["imageTagMutability"] == "IMMUTABLE":
            raise RuntimeError(
                f"tag invalid: the image tag '{tag}' already exists in the '{repository}' "
                "repository and cannot be overwritten because the repository is immutable"
            )
        if current["images"][0]["imageManifest"] == body:
            return
    ecr.put_image(repositoryName=repository, imageManifest=body, imageTag=tag)


@pytest.fixture
def ecr() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("ecr", region_name=REGION)


def registered_repository(ecr: Any) -> tuple[str, str]:
    """The program's repository, created with the inputs it registers; and the image's tag."""
    r = run_program({})
    [repo] = [x for x in r.resources if x.typ == "aws:ecr/repository:Repository"]
    [image] = [x for x in r.resources if x.typ == "docker:index/image:Image"]
    ecr.create_repository(
        repositoryName=repo.inputs["name"],
        imageTagMutability=repo.inputs["imageTagMutability"],
        imageScanningConfiguration=repo.inputs["imageScanningConfiguration"],
        encryptionConfiguration=repo.inputs["encryptionConfigurations"][0],
    )
    return repo.inputs["name"], image.inputs["imageName"].rsplit(":", 1)[1]


def copy_of_sources(target: Path) -> Path:
    for path in image_files(ROOT):
        relative = path.relative_to(ROOT)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / relative)
    return target


def test_a_mode_only_change_keeps_the_tag_and_pushes_again(ecr: Any, tmp_path: Path) -> None:
    sources = copy_of_sources(tmp_path / "checkout")
    assert context_digest(sources) == context_digest(ROOT)
    repository, tag = registered_repository(ecr)
    docker_push(ecr, repository, tag, manifest("built from the checkout"))
    # Another deployer's checkout: the same files, another mode (umask 077, core.fileMode).
    entrypoint = sources / "docker" / "entrypoint.sh"
    entrypoint.chmod(0o700)
    assert context_digest(sources) == context_digest(ROOT)  # the tag does not change...
    # ...but pulumi-docker's context digest does: it rebuilds, with new layer digests.
    docker_push(ecr, repository, tag, manifest("built from the checkout, mode 0700"))
    images = ecr.describe_images(repositoryName=repository)["imageDetails"]
    tagged = [i for i in images if tag in i.get("imageTags", [])]
    assert len(tagged) == 1  # the tag names the new build; ImageUri pins its digest


def test_a_rerun_after_a_push_the_state_lost_pushes_again(ecr: Any) -> None:
    repository, tag = registered_repository(ecr)
    body = manifest("built once")
    docker_push(ecr, repository, tag, body)
    # `pulumi up` was interrupted after the push: the next one builds and pushes it again.
    docker_push(ecr, repository, tag, body)
    [image] = ecr.batch_get_image(repositoryName=repository, imageIds=[{"imageTag": tag}])["images"]
    assert image["imageManifest"] == body


def test_the_push_model_refuses_what_an_immutable_repository_refuses(ecr: Any) -> None:
    """The model above is not a stub that accepts anything: an IMMUTABLE repository (what the
    program created before) refuses both pushes."""
    ecr.create_repository(repositoryName="locked", imageTagMutability="IMMUTABLE")
    docker_push(ecr, "locked", "t", manifest("a"))
    for second in (manifest("a"), manifest("b")):
        with pytest.raises(RuntimeError, match="cannot be overwritten because the repository"):
            docker_push(ecr, "locked", "t", second)
    # moto itself refuses a changed manifest under an immutable tag, as ECR does.
    with pytest.raises(ecr.exceptions.ImageAlreadyExistsException, match="already exists"):
        ecr.put_image(repositoryName="locked", imageManifest=manifest("b"), imageTag="t")


def test_the_tag_hashes_every_image_source() -> None:
    assert {p.relative_to(ROOT).parts[0] for p in image_files(ROOT)} >= {"docker", "mlflow_aws"}
    assert set(IMAGE_SOURCES) >= {"docker/Dockerfile", "mlflow_aws"}
