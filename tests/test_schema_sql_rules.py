"""What the schema provider would say to MySQL, decided from what it saw, as pure data: each
guard of ``projects/schema_sql.py`` as the bad input or hostile server state it stands for
(issue 19: a test for every rule ``./dev mutate projects/schema_sql.py`` can break). The same
rules run against a real MariaDB in ``tests/test_schema_provider.py``; these need no server."""

from __future__ import annotations

import re
import string
from dataclasses import replace
from typing import Any

import pytest

from mlflow_aws.names import validate_name
from projects.schema_sql import (
    COLLATION,
    DEFAULT_MAX_USER_CONNECTIONS,
    Desired,
    Observed,
    Refused,
    SchemaProviderError,
    Statement,
    account,
    decide_change,
    decide_create,
    decide_delete,
    engine_of,
    ensure_registry,
    forget,
    grant_pattern,
    grantee,
    inspection,
    kill_session,
    observed_from,
    password_literal,
    password_problem,
    quote_identifier,
    record,
    registry_lookup,
    retire_previous_password,
    sessions_of,
)

IDS = validate_name("churn-a")
PASSWORD = "Aa0._~-Aa0._~-xyz"  # every character mlflow_aws/passwords.py allows
# What MLflow's store and every Alembic migration need on the project's schema (README.md
# "Adding a project"; tests/test_schema_provider.py runs the migrations with exactly these).
PRIVILEGES = ["ALTER", "CREATE", "DELETE", "DROP", "INDEX", "INSERT", "REFERENCES", "SELECT",
              "TRIGGER", "UPDATE"]  # fmt: skip
GRANT = (
    "GRANT ALTER, CREATE, DELETE, DROP, INDEX, INSERT, REFERENCES, SELECT, TRIGGER, UPDATE "
    "ON `churn\\_a`.* TO `mlflow_churn_a`@'%'"
)
REVOKE = "REVOKE ALL PRIVILEGES, GRANT OPTION FROM `mlflow_churn_a`@'%'"


def nothing(**changes: Any) -> Observed:
    """A server with the registry and nothing of the project's, seen as the master user."""
    seen = Observed(
        current_user="mlflow_admin", collation=None, user_exists=False, global_privileges=(),
        schema_privileges=(), object_privileges=0, recorded_schema=False, recorded_user=False,
        registry=True,
    )  # fmt: skip
    return replace(seen, **changes)


def ours(**changes: Any) -> Observed:
    """The project's schema and user as mlflow-aws left them."""
    seen = nothing(
        collation=COLLATION, user_exists=True, recorded_schema=True, recorded_user=True,
        schema_privileges=tuple(("churn_a", p) for p in PRIVILEGES),
    )  # fmt: skip
    return replace(seen, **changes)


def want(**changes: Any) -> Desired:
    return replace(Desired(IDS, PASSWORD), **changes)


def sql(steps: list[Any]) -> list[str]:
    return [step.statement.sql for step in steps]


def undo(steps: list[Any]) -> list[str | None]:
    return [step.undo.sql if step.undo is not None else None for step in steps]


# -- identifiers and the password: what may enter SQL -----------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a`b", "`a", "'a", "a'", '"a', "a;b", "a b", "a/b", "a\\b",  # leave or break the quoting
        "churn`; DROP DATABASE mysql; --",  # a valid prefix, then the attack (match != fullmatch)
        "A", "Churn", "1a", "_a", "", "a-b", "a" * 65, 5, None, b"churn",
    ],
)  # fmt: skip
def test_quote_identifier_refuses_anything_that_could_leave_its_backticks(value: object) -> None:
    with pytest.raises(SchemaProviderError, match="as a MySQL identifier"):
        quote_identifier(value)


def test_quote_identifier_quotes_what_validate_name_derives_up_to_64_characters() -> None:
    assert quote_identifier("churn_a") == "`churn_a`"
    assert quote_identifier("a" * 64) == f"`{'a' * 64}`"  # MySQL's identifier limit
    assert quote_identifier("a") == "`a`"


def test_a_grant_pattern_escapes_the_underscore_so_it_matches_only_its_schema() -> None:
    # unescaped, `a_b`.* would also grant schema "axb" (LIKE's _ matches any character)
    assert grant_pattern("a_b") == "`a\\_b`"
    assert grant_pattern("ab") == "`ab`"


@pytest.mark.parametrize(
    "password",
    [
        "Abcdefghijk1'",  # a quote after 12 valid characters: would end the SQL literal
        "Abcdefghijk1' OR '1'='1",
        "Abcdefghijk1\\",  # a backslash escapes the closing quote
        "'Abcdefghijk1",
        "Abcdefghij'1",  # a quote inside 12 characters
        "Abcdefghij;1",
        "Abcdefghij`1",
        "Abcdefghij/1",
        "Abcdefghij 1",
        'Abcdefghij"1',
        "Abcdefghijk",  # 11 characters
        "A" * 129,
        "",
        None,
        12345678901234,
    ],
)
def test_a_password_that_could_leave_its_literal_is_refused_before_any_sql(
    password: object,
) -> None:
    problem = password_problem(password)
    assert problem is not None and "12 to 128 characters from A-Z a-z 0-9 - _ . ~" in problem
    with pytest.raises(SchemaProviderError) as caught:
        password_literal(password)  # type: ignore[arg-type]
    if isinstance(password, str) and password:
        assert password not in str(caught.value)  # never echoed
    with pytest.raises(SchemaProviderError):
        decide_create(want(password=password), nothing())


@pytest.mark.parametrize("password", ["A" * 12, "A" * 128, PASSWORD, "a.b_c~d-e0Z9"])
def test_a_generated_password_becomes_a_quoted_literal(password: str) -> None:
    assert password_problem(password) is None
    assert password_literal(password) == f"'{password}'"


def test_accounts_and_grantees_are_quoted_and_validated() -> None:
    assert account("mlflow_churn_a") == "`mlflow_churn_a`@'%'"
    assert grantee("mlflow_churn_a") == "'mlflow_churn_a'@'%'"
    with pytest.raises(SchemaProviderError):
        grantee("x'@'%' OR 1=1 -- ")


def test_a_statement_that_carries_the_password_never_shows_it() -> None:
    steps = decide_create(want(), nothing())
    (secret,) = [s.statement for s in steps if s.statement.secret]
    assert PASSWORD in secret.sql  # what MySQL gets
    for shown in (str(secret), repr(secret), repr(steps)):
        assert PASSWORD not in shown and "IDENTIFIED BY '***'" in shown
    assert all(not s.statement.secret for s in steps if PASSWORD not in s.statement.sql)
    plain = Statement("SELECT 1")
    assert str(plain) == "SELECT 1" and repr(plain) == "Statement('SELECT 1')"
    assert not plain.secret and not plain.changes and not plain.transactional


# -- looking: the inspection and what is read from it -------------------------------------------


def test_inspection_only_reads_and_binds_every_value() -> None:
    statements = [*inspection(IDS).values(), registry_lookup(IDS), sessions_of("mlflow_churn_a")]
    assert all(not s.changes and not s.secret for s in statements)
    summary = inspection(IDS)["summary"].params
    assert summary["schema"] == "churn_a" and summary["user"] == "mlflow_churn_a"
    assert summary["global_grantee"] == summary["table_grantee"] == "'mlflow_churn_a'@'%'"
    assert registry_lookup(IDS).params == {"schema": "churn_a", "user": "mlflow_churn_a"}


def rows(summary: tuple[Any, ...], schema_privileges: list[tuple[str, str]]) -> dict[str, Any]:
    return {"summary": [summary], "schema_privileges": schema_privileges}


def test_observed_reads_a_server_that_has_nothing() -> None:
    seen = observed_from(IDS, rows(("mlflow_admin@%", None, 0, None, None, None), []), [])
    assert seen == nothing(registry=False)
    assert not seen.schema_exists and not seen.collation_differs and seen.grants() == []


def test_observed_reads_a_server_that_has_everything() -> None:
    seen = observed_from(
        IDS,
        rows(("mlflow_admin@%", "utf8mb4_general_ci", "1", "PROCESS,SUPER", "2", 1),
             [("churn\\_a", "SELECT"), ("other\\%", "INSERT")]),
        ["schema", "user"],
    )  # fmt: skip
    assert seen.current_user == "mlflow_admin"
    assert seen.collation == "utf8mb4_general_ci" and seen.schema_exists
    assert seen.collation_differs
    assert seen.user_exists and seen.recorded_schema and seen.recorded_user and seen.registry
    assert seen.global_privileges == ("PROCESS", "SUPER")
    assert seen.schema_privileges == (("churn_a", "SELECT"), ("other%", "INSERT"))
    assert seen.object_privileges == 2
    assert seen.grants() == ["*.*: PROCESS", "*.*: SUPER", "churn_a.*: SELECT",
                             "other%.*: INSERT", "tables or columns: 2 grant(s)"]  # fmt: skip


def test_observed_reads_a_current_user_without_host_and_only_what_was_recorded() -> None:
    seen = observed_from(IDS, rows(("admin", COLLATION, 0, "", 0, 0), []), ["user"])
    assert seen.current_user == "admin" and not seen.collation_differs
    assert seen.recorded_user and not seen.recorded_schema and not seen.registry
    seen = observed_from(IDS, rows(("a@b@%", COLLATION, None, None, None, "0"), []), ["schema"])
    assert seen.current_user == "a@b" and seen.recorded_schema and not seen.recorded_user


# -- deciding: the guards -------------------------------------------------------------------------


def test_the_provider_never_manages_the_account_it_runs_as() -> None:
    master = want(ids=validate_name("churn-a"))
    seen = nothing(current_user="mlflow_churn_a")
    for decide in (decide_create, decide_change):
        with pytest.raises(Refused, match="the account the provider"):
            decide(master, seen)
    with pytest.raises(Refused, match="the account the provider"):
        decide_delete(IDS, seen, drop_data=True)


@pytest.mark.parametrize("recorded", [False, True])
def test_an_account_with_global_privileges_is_never_adopted_changed_or_dropped(
    recorded: bool,
) -> None:
    seen = ours(global_privileges=("SUPER",), recorded_user=recorded)
    with pytest.raises(Refused, match=r"holds global privileges \(SUPER\)"):
        decide_create(want(), seen)
    with pytest.raises(Refused, match="refusing to change"):
        decide_change(want(), seen)
    with pytest.raises(Refused, match="refusing to drop"):
        decide_delete(IDS, seen, drop_data=False)


def test_an_unrecorded_existing_account_is_never_adopted() -> None:
    with pytest.raises(Refused, match="mlflow-aws did not create it"):
        decide_create(want(), ours(recorded_user=False))


def test_an_unrecorded_schema_is_taken_over_only_with_adopt_existing_schema() -> None:
    someone_elses = nothing(collation=COLLATION)
    with pytest.raises(Refused, match="set adoptExistingSchema"):
        decide_create(want(), someone_elses)
    steps = decide_create(want(adopt_existing_schema=True), someone_elses)
    assert not any("SCHEMA" in s for s in sql(steps))  # used as it is, never dropped on undo
    assert "DROP SCHEMA IF EXISTS `churn_a`" not in undo(steps)
    # recorded as ours (a removed project added back): adopted without asking
    assert decide_create(want(), nothing(collation=COLLATION, recorded_schema=True))


def test_a_new_project_on_a_new_cluster_gets_exactly_its_schema_user_and_grant() -> None:
    steps = decide_create(want(), nothing(registry=False))
    registry = sql(ensure_registry())
    assert sql(steps) == [
        *registry,
        f"CREATE SCHEMA `churn_a` CHARACTER SET utf8mb4 COLLATE {COLLATION}",
        f"CREATE USER `mlflow_churn_a`@'%' IDENTIFIED BY '{PASSWORD}' WITH MAX_USER_CONNECTIONS "
        f"{DEFAULT_MAX_USER_CONNECTIONS}",
        GRANT,
        record(IDS, "schema", "churn_a").sql,
        record(IDS, "user", "mlflow_churn_a").sql,
    ]
    assert undo(steps) == [
        None, None, "DROP SCHEMA IF EXISTS `churn_a`", "DROP USER IF EXISTS `mlflow_churn_a`@'%'",
        None, forget("schema", "churn_a").sql, forget("user", "mlflow_churn_a").sql,
    ]  # fmt: skip
    assert [s.statement.params.get("name") for s in steps[-2:]] == ["churn_a", "mlflow_churn_a"]
    assert all(s.statement.changes for s in steps)
    assert [s.statement.transactional for s in steps] == [False] * 5 + [True] * 2
    assert DEFAULT_MAX_USER_CONNECTIONS == 50


def test_with_the_registry_in_place_it_is_not_made_again() -> None:
    assert not any("mlflow_aws" in s for s in sql(decide_create(want(), nothing()))[:2])


def test_a_project_that_is_as_it_should_be_only_gets_its_password_set() -> None:
    for decide in (decide_create, decide_change):
        steps = decide(want(max_user_connections=7), ours())
        assert sql(steps) == [
            f"ALTER USER `mlflow_churn_a`@'%' IDENTIFIED BY '{PASSWORD}' "
            "WITH MAX_USER_CONNECTIONS 7"
        ]
        assert undo(steps) == [None]  # an existing user is never dropped on undo


def test_another_collation_is_repaired_in_place() -> None:
    steps = decide_change(want(), ours(collation="utf8mb4_general_ci"))
    assert sql(steps)[0] == f"ALTER SCHEMA `churn_a` CHARACTER SET utf8mb4 COLLATE {COLLATION}"
    assert len(steps) == 2


@pytest.mark.parametrize(
    ("drift", "why"),
    [
        ({"object_privileges": 1}, "a table grant elsewhere, e.g. SELECT ON mysql.user"),
        ({"schema_privileges": (("churn_a", "SELECT"),)}, "too few privileges"),
        ({"schema_privileges": tuple(("churn_a", p) for p in [*PRIVILEGES, "EVENT"])}, "one more"),
        ({"schema_privileges": tuple(("other", p) for p in PRIVILEGES)}, "on another schema"),
    ],
)
def test_drifted_grants_are_revoked_and_granted_again(drift: dict[str, Any], why: str) -> None:
    for decide in (decide_create, decide_change):
        statements = sql(decide(want(), ours(**drift)))
        assert statements[1:] == [REVOKE, GRANT], why


def test_a_missing_user_is_created_and_granted_without_revoking() -> None:
    steps = decide_change(want(), ours(user_exists=False, schema_privileges=()))
    assert sql(steps)[0].startswith("CREATE USER") and sql(steps)[1:] == [GRANT]
    assert undo(steps) == [None, None]  # the resource is already ours: nothing undone


def test_an_older_stack_records_what_it_made() -> None:
    steps = decide_change(want(), ours(recorded_schema=False, recorded_user=False))
    assert sql(steps)[1:] == [record(IDS, "schema", "churn_a").sql,
                              record(IDS, "user", "mlflow_churn_a").sql]  # fmt: skip
    assert undo(steps)[1:] == [None, None]


def test_removing_a_project_revokes_access_and_keeps_its_data_unless_asked() -> None:
    assert sql(decide_delete(IDS, ours(), drop_data=False)) == [
        "DROP USER IF EXISTS `mlflow_churn_a`@'%'", forget("user", "mlflow_churn_a").sql,
    ]  # fmt: skip
    assert sql(decide_delete(IDS, ours(), drop_data=True)) == [
        "DROP USER IF EXISTS `mlflow_churn_a`@'%'", forget("user", "mlflow_churn_a").sql,
        "DROP SCHEMA IF EXISTS `churn_a`", forget("schema", "churn_a").sql,
    ]  # fmt: skip
    # gone out of band, or never recorded: nothing to drop or forget
    assert decide_delete(IDS, nothing(), drop_data=True) == []
    unrecorded = decide_delete(IDS, nothing(collation=COLLATION, user_exists=True), True)
    assert sql(unrecorded) == ["DROP USER IF EXISTS `mlflow_churn_a`@'%'",
                               "DROP SCHEMA IF EXISTS `churn_a`"]  # fmt: skip


def test_a_session_is_ended_with_kill_or_aurora_rds_kill() -> None:
    assert [s.sql for s in kill_session("42")] == [  # type: ignore[arg-type]
        "KILL CONNECTION 42", "CALL mysql.rds_kill(42)",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        kill_session("42; DROP USER root")  # type: ignore[arg-type]
    assert sessions_of("mlflow_churn_a").params == {"user": "mlflow_churn_a"}


def test_grants_are_ok_only_for_an_existing_user_with_exactly_the_project_privileges() -> None:
    assert ours().grants_ok(IDS)
    assert not ours(global_privileges=("SUPER",)).grants_ok(IDS)  # e.g. granted ON *.* by hand
    assert not ours(object_privileges=1).grants_ok(IDS)  # SELECT ON mysql.user, say
    # the rows of a user dropped by hand (mysql.db left behind) are no grants of a live user
    lingering = ours(user_exists=False)
    assert not lingering.grants_ok(IDS)
    assert sql(decide_change(want(), lingering))[1:] == [GRANT]


def test_an_existing_projects_schema_that_vanished_is_recreated_and_never_dropped_on_undo() -> None:
    steps = decide_change(want(), ours(collation=None))
    assert sql(steps)[0] == f"CREATE SCHEMA `churn_a` CHARACTER SET utf8mb4 COLLATE {COLLATION}"
    assert undo(steps) == [None, None]


def test_the_desired_state_never_shows_the_password() -> None:
    assert PASSWORD not in repr(want()) and PASSWORD not in str(want())


# -- password rotation with the previous password kept valid (dual passwords) -------------------

OLD = "Old0._~-Old0._~-old"


@pytest.mark.parametrize(
    ("version", "engine"),
    [("8.0.39", "mysql"), ("8.0.mysql_aurora.3.10.0", "mysql"), ("11.4.3-MariaDB-1", "mariadb"),
     ("10.11.6-mariadb-log", "mariadb")],
)  # fmt: skip
def test_the_engine_is_read_from_select_version(version: str, engine: str) -> None:
    assert engine_of(version) == engine


@pytest.mark.parametrize("engine", ["mysql", "mariadb"])
def test_a_rotation_keeps_the_previous_password_valid_and_never_shows_either(engine: str) -> None:
    steps = decide_change(want(previous_password=OLD, engine=engine), ours())
    statement = steps[0].statement
    assert statement.secret and statement.changes
    assert PASSWORD in statement.sql and (OLD in statement.sql) == (engine == "mariadb")
    if engine == "mysql":  # MySQL 8.0.14+: one secondary password
        assert statement.sql == (
            f"ALTER USER `mlflow_churn_a`@'%' IDENTIFIED BY '{PASSWORD}' RETAIN CURRENT PASSWORD "
            "WITH MAX_USER_CONNECTIONS 50"
        )
    else:  # MariaDB 10.4+: two authentications joined by OR
        assert statement.sql == (
            "ALTER USER `mlflow_churn_a`@'%' IDENTIFIED VIA mysql_native_password USING "
            f"PASSWORD('{PASSWORD}') OR mysql_native_password USING PASSWORD('{OLD}') "
            "WITH MAX_USER_CONNECTIONS 50"
        )
    for shown in (str(statement), repr(statement), repr(want(previous_password=OLD))):
        assert PASSWORD not in shown and OLD not in shown


@pytest.mark.parametrize("engine", ["mysql", "mariadb"])
def test_no_previous_password_or_the_same_one_is_a_plain_password_change(engine: str) -> None:
    for previous in (None, PASSWORD):
        steps = decide_change(want(previous_password=previous, engine=engine), ours())
        assert steps[0].statement.sql == (
            f"ALTER USER `mlflow_churn_a`@'%' IDENTIFIED BY '{PASSWORD}' "
            "WITH MAX_USER_CONNECTIONS 50"
        )
    assert want().engine == "mysql" and want().previous_password is None


def test_a_hostile_previous_password_is_refused_where_it_would_enter_sql() -> None:
    hostile = "Abcdefghijk1'"
    with pytest.raises(SchemaProviderError, match="12 to 128 characters"):
        decide_change(want(previous_password=hostile, engine="mariadb"), ours())
    # MySQL keeps the current one (RETAIN CURRENT PASSWORD): the previous is never written
    (step,) = decide_change(want(previous_password=hostile, engine="mysql"), ours())
    assert hostile not in step.statement.sql


def test_retiring_the_previous_password_leaves_only_the_new_one() -> None:
    mysql = retire_previous_password("mlflow_churn_a", PASSWORD, "mysql")
    assert mysql.sql == "ALTER USER `mlflow_churn_a`@'%' DISCARD OLD PASSWORD"
    assert mysql.changes and not mysql.secret
    mariadb = retire_previous_password("mlflow_churn_a", PASSWORD, "mariadb")
    assert mariadb.sql == f"ALTER USER `mlflow_churn_a`@'%' IDENTIFIED BY '{PASSWORD}'"
    assert mariadb.changes and mariadb.secret and PASSWORD not in str(mariadb)
    with pytest.raises(SchemaProviderError):
        retire_previous_password("mlflow_churn_a", "Abcdefghijk1'", "mariadb")


def test_every_character_outside_the_password_alphabet_is_refused_anywhere() -> None:
    """The alphabet is built from mlflow_aws/passwords.py's specials (no regex literal for the
    mutation tool to widen): all 128 ASCII characters and a few beyond, each in first, middle
    and last place, against the check of the SQL literal and of the helper's run secret."""
    from mlflow_aws.passwords import UNRESERVED_SPECIALS
    from mlflow_aws.run_secret import CLIENT_TOKEN_ENV, MIN_SECRET_CHARS, run_secret_for

    allowed = set(string.ascii_letters + string.digits + UNRESERVED_SPECIALS)
    # The admin password's overrideSpecial too: a changed one would replace that password.
    assert UNRESERVED_SPECIALS == "-_.~"
    for character in [chr(c) for c in range(128)] + ["é", "\u2028", "\uff07"]:
        for password in (character + "A" * 12, "A" * 6 + character + "A" * 6, "A" * 12 + character):
            refused = password_problem(password) is not None
            assert refused == (character not in allowed), repr(password)
            secret = password.replace("A", "s") + "s" * MIN_SECRET_CHARS
            if character in allowed:
                assert run_secret_for({CLIENT_TOKEN_ENV: secret}) == secret
            else:
                with pytest.raises(
                    ValueError, match=re.escape("characters of A-Z a-z 0-9 - _ . ~")
                ):
                    run_secret_for({CLIENT_TOKEN_ENV: secret})
