"""The project-name rule, rule by rule, as the bad names each part keeps out (issue 19: every
mutant of ``mlflow_aws/names.py`` that ``./dev mutate`` makes must fail one of these, or be
listed as equivalent in ``mutation/equivalent.toml``). Pure functions: no services."""

from __future__ import annotations

import re

import pytest

from mlflow_aws.names import (
    CONNECTION_SECRET_NAME,
    MAX_NAME_LENGTH,
    PROJECT_NAME_PATTERN,
    RULE,
    ProjectNameError,
    bucket_prefix,
    collision_key,
    collisions,
    connection_secret_name,
    name_problem,
    owned_by,
    stack_slug,
    validate_name,
)


@pytest.mark.parametrize(
    "name",
    [
        "a-b'c",  # a quote after a hyphen: leaves a SQL string literal
        "a-b;c",  # a statement separator after a hyphen
        "a-b`c",  # a backtick: leaves a quoted MySQL identifier
        "a-b/c",  # a slash: an S3 sub-prefix of another project
        'a-b"c',
        "a-b\\c",
        "a-b c",
        "ab'c",  # the same without the hyphen (the class before it)
        "'abc",  # and in first place
        "a-",  # a trailing hyphen: "-" must be followed by something
        "a--b",  # a double hyphen (collides with a-b once separators are folded)
        "a-b-",
        "1abc",  # a digit first
        "-abc",
    ],
)
def test_a_hostile_character_anywhere_in_a_name_is_refused(name: str) -> None:
    problem = name_problem(name)
    assert problem is not None and "is not a valid slug" in problem and repr(name) in problem
    with pytest.raises(ProjectNameError, match="not a valid slug"):
        validate_name(name)


@pytest.mark.parametrize("name", ["a", "churn", "a-b", "a1-b2-c3", "x" * MAX_NAME_LENGTH])
def test_valid_names_pass_and_map_to_their_identifiers(name: str) -> None:
    assert name_problem(name) is None
    ids = validate_name(name)
    schema = name.replace("-", "_")
    assert (ids.name, ids.schema, ids.username, ids.s3_prefix) == (
        name, schema, f"mlflow_{schema}", name,
    )  # fmt: skip


def test_the_length_limit_is_exactly_24_and_the_mysql_user_fits_32() -> None:
    assert name_problem("a" * 24) is None
    problem = name_problem("a" * 25)
    assert problem is not None and "25 characters, longer than 24" in problem
    assert len(validate_name("a" * 24).username) <= 32


@pytest.mark.parametrize("value", [None, 3, b"churn", ["churn"]])
def test_a_non_string_is_refused_not_crashed_on(value: object) -> None:
    problem = name_problem(value)
    assert problem is not None and "must be a string" in problem


def test_empty_non_ascii_and_upper_case_names_say_what_is_wrong() -> None:
    assert "is empty" in (name_problem("") or "")
    assert "non-ASCII" in (name_problem("churn\u0430") or "")
    assert "must be lowercase (did you mean 'churn-a'?)" in (name_problem("Churn-A") or "")
    # upper case that is not a slug either is just not a slug, with no misleading suggestion
    assert "not a valid slug" in (name_problem("Churn'") or "")


@pytest.mark.parametrize(
    "name",
    ["aws", "mlflow", "test", "tmp", "innodb", "sys", "mysql", "information-schema",
     "performance-schema", "rdsadmin"],
)  # fmt: skip
def test_reserved_names_are_refused(name: str) -> None:
    problem = name_problem(name)
    assert problem is not None and "is reserved" in problem, problem
    with pytest.raises(ProjectNameError, match="reserved"):
        validate_name(name)


@pytest.mark.parametrize(
    ("name", "owner"),
    [
        ("admin", "master user"),  # mlflow_admin: the cluster's master user
        ("mlflow-aws", "the stack's own"),  # schema mlflow_aws: the provider's registry
        ("root", "an account of the engine"),
        ("public", "an account of the engine"),
        ("rds-tools", "belongs to the database engine"),
        ("mysql-data", "belongs to the database engine"),
        ("mariadb-x", "belongs to the database engine"),
    ],
)
def test_names_whose_schema_or_user_someone_else_owns_are_refused(name: str, owner: str) -> None:
    problem = name_problem(name)
    assert problem is not None and "is reserved" in problem and owner in problem, problem


# MySQL 8 reserved accounts (dev.mysql.com/doc/refman/8.0/en/reserved-accounts.html), Aurora's
# (docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/AuroraMySQL.Reference.html), MariaDB's.
ENGINE_ACCOUNTS = [
    "root", "rdsadmin", "rdsrepladmin", "rdsproxyadmin", "rds_superuser_role", "mysql.sys",
    "mysql.session", "mysql.infoschema", "mariadb.sys", "public",
]  # fmt: skip


@pytest.mark.parametrize("account", ENGINE_ACCOUNTS)
def test_every_engine_account_is_owned_by_the_engine(account: str) -> None:
    assert owned_by("some_schema", account) is not None
    assert owned_by("some_schema", account.upper()) is not None  # compared case-blind


@pytest.mark.parametrize(
    "schema",
    ["sys", "tmp", "innodb", "mysql", "information_schema", "performance_schema", "rdsx",
     "mysqlx", "mariadbx", "performance_schema_x", "information_schema_x"],
)  # fmt: skip
def test_every_engine_schema_and_family_is_owned_by_the_engine(schema: str) -> None:
    assert "belongs to the database engine" in (owned_by(schema, "mlflow_ok") or "")


def test_an_ordinary_schema_and_user_are_nobodys() -> None:
    assert owned_by("churn", "mlflow_churn") is None
    assert owned_by("x", "mlflow_admin") is not None
    assert owned_by("mlflow_aws", "x") is not None


def test_collisions_fold_case_and_separators_and_name_both() -> None:
    assert collision_key("  Churn_Model.V2 ") == "churn-model-v2"
    assert collision_key("a--b") == collision_key("a-b") == collision_key("a b") == "a-b"
    assert collisions(["churn", "fraud"]) == []
    # a quote or a slash is not a separator: such a name is refused for itself, and is not
    # reported as colliding with a valid one
    assert collisions(["a-b", "a'b", "a/b", "a;b", "a`b"]) == []
    (twice,) = collisions(["churn", "churn"])
    assert "'churn' is listed twice" in twice
    (collides,) = collisions(["churn-model", "Churn_Model"])
    assert "'Churn_Model' collides with 'churn-model'" in collides


def test_the_rule_text_names_the_limit() -> None:
    assert f"at most {MAX_NAME_LENGTH} characters" in RULE


# -- the slug rule and the patterns built from it ----------------------------------------------

HOSTILE_NAMES = ["a-b'c", "a-b/c", "a--b", "a-", "1abc", "-abc", "a_b", "A-b", "a b"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_secret_or_artifact_root_named_for_a_hostile_project_is_not_taken_as_one(
    name: str,
) -> None:
    # The helper recognises secret names and artifact roots by the name rule itself, so a
    # planted secret mlflow-aws/dev/a--b is not "a connection secret" of any project.
    assert name_problem(name) is not None
    assert CONNECTION_SECRET_NAME.fullmatch(connection_secret_name("dev", name)) is None
    assert re.fullmatch(PROJECT_NAME_PATTERN, name) is None


@pytest.mark.parametrize(("stack", "taken"), [("", False), ("s" * 100, True), ("s" * 101, False)])
def test_a_secret_named_for_an_empty_or_over_long_stack_is_not_taken_as_a_connection_secret(
    stack: str, taken: bool
) -> None:
    # Pulumi stack names are 1 to 100 characters (Pulumi's stack naming rules): no stack makes
    # mlflow-aws//churn or a 101-character stack's secret, so the helper does not trust one.
    match = CONNECTION_SECRET_NAME.fullmatch(connection_secret_name(stack, "churn"))
    assert (match is not None) is taken


@pytest.mark.parametrize("name", ["a", "churn", "team-a-2", "x" * MAX_NAME_LENGTH])
def test_every_valid_project_names_its_secret_as_the_helper_recognises_it(name: str) -> None:
    assert name_problem(name) is None
    match = CONNECTION_SECRET_NAME.fullmatch(connection_secret_name("Team_A.prod", name))
    assert match is not None and match["project"] == name and match["stack"] == "Team_A.prod"


@pytest.mark.parametrize(
    ("stack", "slug", "bucket"),
    [
        ("dev", "dev", "mlflow-aws-dev-"),
        ("Team_A.Prod", "team-a-prod", "mlflow-aws-team-a-prod-"),
        ("a--b", "a-b", "mlflow-aws-a--b-"),  # the bucket keeps the stack's own hyphens
        ("a-.b", "a-b", "mlflow-aws-a--b-"),
        ("__", "stack", "mlflow-aws-stack-"),  # nothing left: a name still
    ],
)
def test_a_stack_name_with_separator_runs_gets_one_slug(stack: str, slug: str, bucket: str) -> None:
    assert stack_slug(stack) == slug
    assert bucket_prefix(stack) == bucket
    assert re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", slug)
