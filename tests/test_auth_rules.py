"""The sign-in app's rules (``mlflow_aws/auth/sign_in_app.py``) as the attacks each one keeps
out (issue 19: every mutant ``./dev mutate mlflow_aws/auth/sign_in_app.py`` makes must fail one
of these or a test of ``tests/test_auth_unit.py`` / ``tests/test_auth_e2e.py``). Pure: no AWS."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, cast

import pytest

from mlflow_aws.auth.sign_in_app import (
    ALLOWED_GROUPS_ENV,
    ALLOWED_ROLES_ENV,
    GATEWAY_ENV,
    MARKER_URL_ENV,
    STATIC_PREFIX_ENV,
    SettingsError,
    _authorization,
    authorize,
    role_allowed,
    settings_from_environ,
    split_list,
    sso_permission_set,
)
from mlflow_aws.auth.token import AUDIENCE_ENV, CallerIdentity

OWN = "111122223333"
OTHER = "999988887777"
SSO_ROLE = "AWSReservedSSO_DataScientist_0123456789abcdef"


# -- who may: roles --------------------------------------------------------------------------


def test_a_role_arn_allows_that_accounts_role_and_no_other_accounts_role_of_that_name() -> None:
    allowed = frozenset({f"arn:aws:iam::{OTHER}:role/ml-team"})
    assert role_allowed(OTHER, "ml-team", allowed, OWN)
    # anyone can create a role called ml-team in an account of their own
    assert not role_allowed("444455556666", "ml-team", allowed, OWN)
    assert not role_allowed(OWN, "ml-team", allowed, OWN)
    assert not role_allowed(OTHER, "ml-team-admin", allowed, OWN)
    assert not role_allowed(OTHER, "ml", allowed, OWN)


def test_a_role_arn_with_a_path_allows_the_role_by_its_name() -> None:
    allowed = frozenset({f"arn:aws:iam::{OTHER}:role/teams/ml/ml-team"})
    assert role_allowed(OTHER, "ml-team", allowed, OWN)
    assert not role_allowed(OTHER, "ml", allowed, OWN)


def test_a_role_name_means_this_account_only() -> None:
    assert role_allowed(OWN, "ml-team", frozenset({"ml-team"}), OWN)
    assert not role_allowed(OTHER, "ml-team", frozenset({"ml-team"}), OWN)
    assert not role_allowed(OWN, "ml-team", frozenset({"ml"}), OWN)
    assert not role_allowed(OWN, "ml-team", frozenset(), OWN)


def test_an_sso_role_matches_its_permission_set_in_this_account_only() -> None:
    assert sso_permission_set(SSO_ROLE) == "DataScientist"
    assert role_allowed(OWN, SSO_ROLE, frozenset({"sso:DataScientist"}), OWN)
    assert not role_allowed(OTHER, SSO_ROLE, frozenset({"sso:DataScientist"}), OWN)
    # issue 14: a plain name is a role's name only, never a permission set's
    assert not role_allowed(OWN, SSO_ROLE, frozenset({"DataScientist"}), OWN)
    assert role_allowed(OWN, SSO_ROLE, frozenset({SSO_ROLE}), OWN)  # its exact name
    # not an Identity Center role: the same name is not a permission set
    assert sso_permission_set("AWSReservedSSO_DataScientist") is None
    assert sso_permission_set("AWSReservedSSO_DataScientist_0123456789abcdeg") is None
    assert sso_permission_set("AWSReservedSSO_DataScientist_0123456789abcde") is None
    assert sso_permission_set(f"x{SSO_ROLE}") is None and sso_permission_set(f"{SSO_ROLE}0") is None
    assert sso_permission_set("AWSReservedSSO_DataScientist_0123456789abcde'") is None
    assert sso_permission_set("AWSReservedSSO__0123456789abcdef") is None  # no permission set
    # "None" is a valid permission set name: its entry allows no role that is not an SSO one
    assert not role_allowed(OWN, "ml-team", frozenset({"sso:None"}), OWN)
    assert not role_allowed(
        OWN, "AWSReservedSSO_DataScientist", frozenset({"sso:DataScientist"}), OWN
    )


@pytest.mark.parametrize(
    "entry",
    [
        "arn:aws:iam::11112222333:role/ml-team",  # 11 account digits
        "arn:aws:iam::1111222233334:role/ml-team",  # 13
        "arn:aws:iam::111122223333:role/",  # no role name
        "arn:aws:iam::111122223333:user/ml-team",  # a user, not a role
        "arn:aws:iam::111122223333:role/ml-team/",
        "arn:aws:iam::111122223333:role/ml team",
        "arn:aws:iam::111122223333:role/ml'team",
        "arn:aws:iam:::role/ml-team",
        "arn:aws:sts::111122223333:role/ml-team",
        "arn:other:iam::111122223333:role/ml-team",
    ],
)
def test_an_allowed_entry_that_is_not_a_role_arn_allows_nobody(entry: str) -> None:
    for account in (OWN, "11112222333", "1111222233334"):
        for role in ("ml-team", "ml team", "ml'team", ""):
            assert not role_allowed(account, role, frozenset({entry}), OWN), (entry, account, role)


def test_allowed_lists_split_on_commas_and_spaces_only() -> None:
    assert split_list("ml.team, data-sci\nops_1\t a+b=c@d") == {
        "ml.team", "data-sci", "ops_1", "a+b=c@d",
    }  # fmt: skip
    assert split_list(f"arn:aws:iam::{OWN}:role/a/b") == {f"arn:aws:iam::{OWN}:role/a/b"}
    assert split_list("") == split_list(None) == split_list(" , ,") == frozenset()


# -- who may: the decision ----------------------------------------------------------------------


def decide(arn: str, roles: set[str] | None = None, groups: set[str] | None = None,
           user_groups: frozenset[str] = frozenset()) -> tuple[int, str]:  # fmt: skip
    settings = SimpleNamespace(
        allowed_roles=frozenset(roles if roles is not None else {"ml-team"}),
        allowed_groups=frozenset(groups if groups is not None else {"ml-users"}),
    )
    asked: list[str] = []

    def groups_of(user: str) -> frozenset[str]:
        asked.append(user)
        return user_groups

    identity = CallerIdentity(arn, OWN, "AROAEXAMPLE")
    decision = authorize(identity, cast(Any, settings), lambda: OWN, groups_of)
    assert decision.arn == arn
    assert decision.allowed == (decision.status == 200)
    return decision.status, decision.reason


def test_an_assumed_role_of_an_allowed_role_signs_in() -> None:
    assert decide(f"arn:aws:sts::{OWN}:assumed-role/ml-team/alice") == (200, "allowed role")
    assert decide(f"arn:aws-cn:sts::{OWN}:assumed-role/ml-team/alice")[0] == 200


@pytest.mark.parametrize(
    "arn",
    [
        f"arn:aws:sts::{OTHER}:assumed-role/ml-team/alice",  # another account's ml-team
        "arn:aws:sts::11112222333:assumed-role/ml-team/alice",  # 11 digits
        "arn:aws:sts::1111222233334:assumed-role/ml-team/alice",  # 13 digits
        f"arn:aws:sts::{OWN}:assumed-role/ml-team",  # no session name
        f"arn:aws:sts::{OWN}:assumed-role/ml-team/",
        f"arn:aws:sts::{OWN}:assumed-role/other/alice",
        f"arn:aws:sts::{OWN}:assumed-role/ml'team/alice",
        f"arn:aws:iam::{OWN}:root",
        f"arn:aws:sts::{OWN}:federated-user/ml-team",
        f"arn:aws:iam::{OWN}:role/ml-team",  # a role ARN is never a caller
        f"xarn:aws:sts::{OWN}:assumed-role/ml-team/alice",
        f"arn:aws';:sts::{OWN}:assumed-role/ml-team/alice",  # not a partition
        f"arn:aws:sts::{OWN}:assumed-role/ml-team/alice/../x\n",
    ],
)
def test_no_other_identity_signs_in_as_an_allowed_role(arn: str) -> None:
    status, reason = decide(arn)
    assert status == 403 and reason.startswith(arn)


def test_a_malformed_caller_arn_is_refused_as_not_a_role_or_user() -> None:
    for arn in (
        "arn:aws:sts::1111222233334:assumed-role/ml-team/alice",  # 13 account digits
        "arn:aws:sts::11112222333:assumed-role/ml-team/alice",  # 11
        "arn:aws:iam::11112222333:user/carol",
        "arn:aws:iam::1111222233334:user/carol",
        f"arn:aws:iam::{OWN}:user/",
        f"arn:aws:iam::{OWN}:user/team/",
        f"arn:aws:iam::{OWN}:user/car'ol",
        f"arn:aws';:iam::{OWN}:user/carol",
        f"arn:aws:sts::{OWN}:assumed-role//alice",
        f"arn:aws:sts::{OWN}:assumed-role/ml'team/alice",
    ):
        assert decide(arn, user_groups=frozenset({"ml-users"})) == (
            403, f"{arn}: only IAM roles and IAM users in allowed groups may sign in",
        ), arn  # fmt: skip


def test_an_iam_user_signs_in_through_an_allowed_group_of_this_account_only() -> None:
    carol = f"arn:aws:iam::{OWN}:user/dev/carol"
    assert decide(carol, user_groups=frozenset({"ml-users", "x"})) == (200, "allowed group")
    assert decide(f"arn:aws:iam::{OWN}:user/carol", user_groups=frozenset({"ml-users"}))[0] == 200
    assert decide(carol, user_groups=frozenset({"other"})) == (
        403, f"{carol}: user is in none of the allowed groups",
    )  # fmt: skip
    assert decide(carol, groups=set(), user_groups=frozenset({"ml-users"})) == (
        403, f"{carol}: this user is not allowed on this server",
    )  # fmt: skip
    someone = f"arn:aws:iam::{OTHER}:user/dev/carol"  # a carol of another account
    assert decide(someone, user_groups=frozenset({"ml-users"})) == (
        403, f"{someone}: this user is not allowed on this server",
    )  # fmt: skip


# -- the request's Authorization ------------------------------------------------------------------


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers)}


def test_a_request_with_two_authorization_headers_is_not_a_bearer_token() -> None:
    # a browser extension or a proxy adding a second header: neither one wins
    for first, second in ((b"Bearer aws-iam-v1.mine", b"Bearer aws-iam-v1.theirs"),
                          (b"Bearer a", b"Bearer a")):  # fmt: skip
        seen = _authorization(scope((b"authorization", first), (b"Authorization", second)))
        assert seen is not None and not seen.lower().startswith("bearer")


def test_one_authorization_header_is_read_in_any_case_and_none_is_none() -> None:
    assert _authorization(scope((b"Authorization", b"Bearer x"))) == "Bearer x"
    assert _authorization(scope((b"AUTHORIZATION", b"Bearer \xe9"))) == "Bearer \u00e9"
    assert _authorization(scope((b"x-authorization", b"Bearer x"))) is None
    assert _authorization(scope()) is None and _authorization({"type": "http"}) is None


# -- the server's settings: refused at start, before any request --------------------------------

MARKER = "https://mlflow-aws-dev.s3.eu-west-1.amazonaws.com/churn/.mlflow-aws-sign-in"
ENVIRON = {
    AUDIENCE_ENV: "mlflow.example.com/churn",
    MARKER_URL_ENV: MARKER,
    "AWS_REGION": "eu-west-1",
    ALLOWED_ROLES_ENV: f"ml-team, arn:aws:iam::{OTHER}:role/x",
    ALLOWED_GROUPS_ENV: "ml-users",
}


def settings(**changes: str | None) -> Any:
    environ = {k: v for k, v in {**ENVIRON, **changes}.items() if v is not None}
    return settings_from_environ(environ, endpoint_for=lambda r: f"https://sts.{r}.amazonaws.com/")


def test_the_settings_of_a_projects_server() -> None:
    read = settings(**{STATIC_PREFIX_ENV: "/churn/"})
    assert read.audience == "mlflow.example.com/churn" and read.marker_url == MARKER
    assert read.allowed_roles == {"ml-team", f"arn:aws:iam::{OTHER}:role/x"}
    assert read.allowed_groups == {"ml-users"}
    assert read.sts_url == "https://sts.eu-west-1.amazonaws.com/"
    assert read.static_prefix == "/churn" and read.region == "eu-west-1"
    assert settings(AWS_REGION=None, AWS_DEFAULT_REGION="us-east-1").region == "us-east-1"
    assert (
        settings(**{AUDIENCE_ENV: " mlflow.example.com/churn "}).audience == ENVIRON[AUDIENCE_ENV]
    )


@pytest.mark.parametrize(
    ("value", "on"), [("true", True), ("1", True), (" TRUE ", True), ("false", False),
                      ("0", False), ("no", False)],
)  # fmt: skip
def test_the_ai_gateway_follows_mlflows_own_switch(value: str, on: bool) -> None:
    assert settings(**{GATEWAY_ENV: value}).gateway_enabled is on
    assert settings().gateway_enabled is True  # MLflow's default (server.env turns it off)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({AUDIENCE_ENV: None}, "MLFLOW_AWS_IAM_AUDIENCE is not set"),
        ({AUDIENCE_ENV: "  "}, "MLFLOW_AWS_IAM_AUDIENCE is not set"),
        ({AUDIENCE_ENV: "mlflow.example.com"}, "is not <domain>/<project>"),  # host only
        ({AUDIENCE_ENV: "mlflow.example.com/"}, "is not <domain>/<project>"),
        ({AUDIENCE_ENV: "/churn/"}, "is not <domain>/<project>"),
        ({AUDIENCE_ENV: "MLflow.example.com/churn"}, "in lowercase"),
        ({MARKER_URL_ENV: None}, "MLFLOW_AWS_IAM_MARKER_URL is not set"),
        ({MARKER_URL_ENV: " "}, "MLFLOW_AWS_IAM_MARKER_URL is not set"),
        ({MARKER_URL_ENV: "https://evil.example.com/.mlflow-aws-sign-in"}, "not on an S3"),
        ({MARKER_URL_ENV: MARKER + "?x=1"}, "does not name"),
        ({"AWS_REGION": None}, "AWS_REGION is not set"),
        ({"AWS_REGION": ""}, "AWS_REGION is not set"),
        ({ALLOWED_ROLES_ENV: "arn:aws:iam::1111222233334:role/x"}, "is not an IAM role ARN"),
        ({ALLOWED_ROLES_ENV: "ml, arn:aws:iam::11112222333:role/x"}, "is not an IAM role ARN"),
        ({ALLOWED_ROLES_ENV: f"arn:aws:iam::{OWN}:user/x"}, "is not an IAM role ARN"),
    ],
)
def test_a_server_with_wrong_settings_refuses_to_start(
    changes: dict[str, str | None], reason: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(reason)):
        settings(**changes)


def test_a_marker_on_the_configured_s3_endpoint_is_accepted() -> None:
    moto = "http://127.0.0.1:5000/b/churn/.mlflow-aws-sign-in"
    read = settings(**{MARKER_URL_ENV: moto, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:5000"})
    assert read.marker_url == moto


# -- the characters IAM allows in names are allowed, and only those -----------------------------
# IAM role, user and path names take letters, digits and +=,.@_- (and / in paths); IAM Identity
# Center's permission set names the same, 1-32 of them.


def test_a_role_whose_name_has_a_plus_signs_in_and_one_with_a_star_does_not() -> None:
    assert decide(f"arn:aws:sts::{OWN}:assumed-role/ml+team/alice", roles={"ml+team"})[0] == 200
    star = f"arn:aws:sts::{OWN}:assumed-role/ml*team/alice"
    assert decide(star, roles={"ml*team"}) == (
        403, f"{star}: only IAM roles and IAM users in allowed groups may sign in",
    )  # fmt: skip


def test_a_user_whose_name_or_path_has_a_plus_signs_in_through_a_group() -> None:
    for arn in (f"arn:aws:iam::{OWN}:user/c+rol", f"arn:aws:iam::{OWN}:user/a+b/carol"):
        assert decide(arn, user_groups=frozenset({"ml-users"})) == (200, "allowed group"), arn
    star = f"arn:aws:iam::{OWN}:user/c*rol"
    assert decide(star, user_groups=frozenset({"ml-users"}))[1].endswith(
        "only IAM roles and IAM users in allowed groups may sign in"
    )


def test_a_role_arn_entry_with_a_plus_in_its_name_or_path_allows_that_role() -> None:
    assert role_allowed(OTHER, "ml+team", frozenset({f"arn:aws:iam::{OTHER}:role/ml+team"}), OWN)
    assert role_allowed(OTHER, "ml", frozenset({f"arn:aws:iam::{OTHER}:role/a+b/ml"}), OWN)
    assert settings(**{ALLOWED_ROLES_ENV: f"arn:aws:iam::{OTHER}:role/a+b/ml+team"})


@pytest.mark.parametrize(
    "entry",
    [
        f"arn:aws';:iam::{OWN}:role/ml-team",  # a partition with a quote
        f"arn:aws`:iam::{OWN}:role/ml-team",
        f"arn:aws/x:iam::{OWN}:role/ml-team",
        f"arn:aws:iam::{OWN}:role/ml*team",
        f"arn:aws:iam::{OWN}:role/a*b/ml-team",
    ],
)
def test_an_allowed_role_arn_with_a_character_iam_never_uses_stops_the_server(entry: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"{entry!r} is not an IAM role ARN")):
        settings(**{ALLOWED_ROLES_ENV: entry})


def test_a_permission_set_name_of_32_characters_is_taken_and_33_are_refused() -> None:
    longest = "P" * 32
    assert settings(**{ALLOWED_ROLES_ENV: f"sso:{longest}"}).allowed_roles == {f"sso:{longest}"}
    assert settings(**{ALLOWED_ROLES_ENV: "sso:Data+Sci=1,2.3@4_5-6"})
    for bad in (f"sso:{longest}P", "sso:Data*Sci", "sso:Data'Sci", "sso:"):
        with pytest.raises(SettingsError, match=re.escape(f"{bad!r} is not sso:<Permission")):
            settings(**{ALLOWED_ROLES_ENV: bad})


# -- the allowed lists as the program writes them --------------------------------------------------


def test_a_json_array_of_names_after_whitespace_is_still_read_as_json() -> None:
    # a YAML block or an env file writes the value on a line of its own
    assert split_list('\n ["ml,team", "ops"]\n') == {"ml,team", "ops"}


def test_names_in_a_json_array_lose_surrounding_spaces_and_blank_names_are_dropped() -> None:
    assert split_list('[" ml-team ", "", "  ", "ops"]') == {"ml-team", "ops"}
    read = settings(**{ALLOWED_ROLES_ENV: '[" ml-team "]', ALLOWED_GROUPS_ENV: '["  "]'})
    assert read.allowed_roles == {"ml-team"} and read.allowed_groups == frozenset()


@pytest.mark.parametrize("text", ['["ml-team"', '["ml-team",]', "[ml-team]", '["a"] x'])
def test_a_broken_json_array_stops_the_server_naming_the_value(text: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(f"not a JSON array of names: {text!r}")):
        split_list(text)
    with pytest.raises(SettingsError, match="not a JSON array of names"):
        settings(**{ALLOWED_GROUPS_ENV: text})


def test_an_sso_role_is_refused_when_its_path_cannot_be_checked() -> None:
    # a server without IAM lookups cannot tell Identity Center's role from a look-alike
    arn = f"arn:aws:sts::{OWN}:assumed-role/{SSO_ROLE}/alice"
    assert decide(arn, roles={"sso:DataScientist"}) == (
        403,
        f"{arn}: role {SSO_ROLE} is not an IAM Identity Center role (its path is unknown, "
        "not /aws-reserved/sso.amazonaws.com/…)",
    )


def test_a_look_alike_sso_role_is_refused_naming_the_path_it_has() -> None:
    # anyone with iam:CreateRole can name a role AWSReservedSSO_DataScientist_<16 hex>
    arn = f"arn:aws:sts::{OWN}:assumed-role/{SSO_ROLE}/alice"
    settings = SimpleNamespace(allowed_roles=frozenset({"sso:DataScientist"}),
                               allowed_groups=frozenset())  # fmt: skip
    for path in ("/", "/aws-reserved/", "/x/aws-reserved/sso.amazonaws.com/"):
        paths = {SSO_ROLE: path}
        decision = authorize(CallerIdentity(arn, OWN, "AROA"), cast(Any, settings), lambda: OWN,
                             lambda u: frozenset(), paths.__getitem__)  # fmt: skip
        assert (decision.status, decision.reason) == (
            403,
            f"{arn}: role {SSO_ROLE} is not an IAM Identity Center role (its path is {path}, "
            "not /aws-reserved/sso.amazonaws.com/…)",
        )
    made = authorize(
        CallerIdentity(arn, OWN, "AROA"),
        cast(Any, settings),
        lambda: OWN,
        lambda u: frozenset(),
        lambda r: "/aws-reserved/sso.amazonaws.com/eu-west-1/",
    )
    assert (made.status, made.reason) == (200, "allowed role")


@pytest.mark.parametrize("hostile", ["'", '"', "`", ";", "\\", " "])
def test_a_caller_or_an_allowed_arn_with_a_hostile_character_in_its_path_is_nobody(
    hostile: str,
) -> None:
    # IAM paths take letters, digits, +=,.@_- and /: anything else is not an IAM identity
    user = f"arn:aws:iam::{OWN}:user/dev{hostile}x/carol"
    assert decide(user, user_groups=frozenset({"ml-users"})) == (
        403, f"{user}: only IAM roles and IAM users in allowed groups may sign in",
    )  # fmt: skip
    entry = f"arn:aws:iam::{OTHER}:role/teams{hostile}x/ml-team"
    assert not role_allowed(OTHER, "ml-team", frozenset({entry}), OWN)
    if hostile != " ":  # a space separates entries
        with pytest.raises(SettingsError, match="is not an IAM role ARN"):
            settings(**{ALLOWED_ROLES_ENV: entry})
