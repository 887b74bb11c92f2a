"""The connection bundle has one definition (mlflow_aws/bundle.py): the program writes it, the
helper reads every key of it, and the central server's task definition references its keys.
A key renamed or dropped on one side fails here, not in a teammate's first ``serve``."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from helper.outputs import OutputsError, ProjectConnection, parse_connection_bundle
from infra.containers import container_secrets
from mlflow_aws.bundle import BUNDLE_KEYS, KEY, ConnectionBundle

# The helper takes the user from BackendStoreUri; Username is there for operators.
NOT_READ_BY_THE_HELPER = {"username"}
# What the helper records about where it read the bundle, not a key of the bundle itself.
READ_ALONGSIDE = {"secret_arn"}
OPTIONAL = {"stack", "database_ca_bundle", "server_role_arn", "tracking_uri"}

BUNDLE = ConnectionBundle(
    project="churn",
    stack="dev",
    database="churn",
    username="mlflow_churn",
    password="Pw-0123456789abcdef",
    backend_store_uri="mysql+pymysql://mlflow_churn:Pw-0123456789abcdef@db.example:3306/churn",
    artifact_root="s3://bucket/churn",
    database_endpoint="db.example",
    database_port=3306,
    region="eu-west-1",
    image_uri="123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow@sha256:" + "0" * 64,
    mlflow_version="3.17.2",
    database_ca_bundle="-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
    server_role_arn="arn:aws:iam::123456789012:role/mlflow-aws-dev-churn-server",
    tracking_uri="https://mlflow.example.com/churn",
)


def written() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(BUNDLE.to_json())
    return data


def test_the_helper_reads_back_what_the_program_writes() -> None:
    connection = parse_connection_bundle(written(), "connection secret")
    read = {f.name for f in dataclasses.fields(ProjectConnection)} - READ_ALONGSIDE
    bundle = {f.name for f in dataclasses.fields(ConnectionBundle)}
    assert read == bundle - NOT_READ_BY_THE_HELPER
    for name in read:
        assert getattr(connection, name) == getattr(BUNDLE, name), name


def test_the_keys_are_the_bundle_fields_in_json_case() -> None:
    assert set(written()) == set(BUNDLE_KEYS)
    assert KEY["backend_store_uri"] == "BackendStoreUri"
    assert KEY["database_ca_bundle"] == "DatabaseCaBundle"
    assert len(set(BUNDLE_KEYS)) == len(BUNDLE_KEYS)


@pytest.mark.parametrize(
    "name",
    [f.name for f in dataclasses.fields(ConnectionBundle) if f.name not in NOT_READ_BY_THE_HELPER],
)
def test_a_renamed_key_is_noticed_by_the_reader(name: str) -> None:
    """Each key the helper reads, renamed in the secret: a required one is an error naming it,
    an optional one reads as unset."""
    data = written()
    data[KEY[name] + "Renamed"] = data.pop(KEY[name])
    if name in OPTIONAL:
        assert getattr(parse_connection_bundle(data, "connection secret"), name) is None
    else:
        with pytest.raises(OutputsError, match=KEY[name]):
            parse_connection_bundle(data, "connection secret")


def test_the_task_definition_references_keys_the_bundle_has() -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mlflow-aws/dev/churn-AbCdEf"
    referenced = {s["valueFrom"].removeprefix(f"{arn}:").removesuffix("::")
                  for s in container_secrets(arn)}  # fmt: skip
    assert referenced == {KEY["backend_store_uri"], KEY["database_ca_bundle"]}
    assert referenced <= set(BUNDLE_KEYS)
