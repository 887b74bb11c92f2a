"""A corpus of project names that must never become a schema, a MySQL user or an S3 prefix.

Each entry is ``(value, why)``. ``HOSTILE_NAMES`` are refused on their own; ``COLLIDING_LISTS``
are lists whose names may each look fine but must be refused together (duplicates, and names
that only differ by case or separators). ``NON_STRINGS`` are config items of the wrong type.
"""

from __future__ import annotations

from typing import Any

CYRILLIC_A = "\u0430"  # looks like Latin 'a'
GREEK_OMICRON = "\u03bf"  # looks like Latin 'o'

HOSTILE_NAMES: list[tuple[str, str]] = [
    # SQL injection, quotes, backticks, semicolons, comments
    ("churn'; DROP DATABASE mysql; --", "SQL injection with a quote and a semicolon"),
    ("churn`; DROP DATABASE `mysql", "backtick breaking out of a quoted identifier"),
    ("x` OR 1=1 -- ", "backtick injection with a comment"),
    ('churn" OR "1"="1', "double quotes"),
    ("churn' OR '1'='1", "single quotes"),
    ("churn;", "a trailing semicolon"),
    ("churn; SELECT SLEEP(10)", "stacked statement"),
    ("churn--", "a comment marker"),
    ("churn/*", "a block comment opener"),
    ("churn#", "a hash comment"),
    ("'", "a lone quote"),
    ("`", "a lone backtick"),
    ("\\", "a backslash"),
    ("churn\\'", "an escaped quote"),
    ("churn%", "a LIKE wildcard in GRANT ... ON `db%`"),
    ("churn_", "an underscore: a LIKE wildcard in GRANT and a separator collision"),
    ("ch_rn", "an underscore in the middle"),
    ("*", "a GRANT wildcard"),
    ("churn@localhost", "a user@host part"),
    ("churn\x00", "a NUL byte"),
    ("churn\n", "a trailing newline"),
    ("chu\nrn", "an embedded newline"),
    ("${jndi:ldap://x}", "template injection"),
    ("$(rm -rf /)", "shell substitution"),
    # path and URL pieces (S3 prefixes, ARNs)
    ("../etc", "a parent directory"),
    ("churn/fraud", "a slash: an S3 sub-prefix"),
    ("churn.fraud", "a dot"),
    ("s3://bucket", "a URL"),
    ("arn:aws:iam::123:root", "an ARN"),
    # unicode look-alikes
    (f"churn{CYRILLIC_A}", "a Cyrillic a that looks Latin"),
    (f"ch{CYRILLIC_A}rn", "a Cyrillic a in the middle"),
    (f"m{GREEK_OMICRON}del", "a Greek omicron that looks like o"),
    ("ｃｈｕｒｎ", "fullwidth letters"),
    ("ﬁle", "a ligature (NFKC folds it to 'file')"),
    ("chur\u200bn", "a zero-width space"),
    ("churn\u00a0", "a non-breaking space"),
    ("ćhurn", "an accented letter"),
    ("ıris", "a dotless i"),
    ("churn\u202e", "a right-to-left override"),
    # reserved names
    ("mysql", "MySQL's system schema"),
    ("information-schema", "information_schema"),
    ("information_schema", "information_schema, as written"),
    ("performance-schema", "performance_schema"),
    ("performance_schema", "performance_schema, as written"),
    ("sys", "the sys schema"),
    ("MySQL", "a reserved name in another case"),
    # names whose user or schema the stack or the engine owns
    ("admin", "user mlflow_admin: the cluster's master user"),
    ("mlflow-aws", "schema mlflow_aws: the provider's registry"),
    ("root", "schema root: the engine's superuser's name"),
    ("rdsadmin", "Aurora's own administrative account and schema"),
    ("rds-tools", "the rds* family Aurora reserves"),
    ("mysql-data", "the mysql* family"),
    ("mariadb-sys", "the mariadb* family"),
    # case
    ("Churn", "upper case"),
    ("CHURN", "all upper case"),
    # length
    ("a" * 25, "one over the limit"),
    ("a" * 64, "MySQL's schema name limit"),
    ("a" * 1000, "far over any limit"),
    # empty and whitespace
    ("", "empty"),
    (" ", "a space"),
    ("\t", "a tab"),
    (" churn", "a leading space"),
    ("ch urn", "an inner space"),
    # slug shape
    ("1churn", "starts with a digit"),
    ("-churn", "starts with a hyphen"),
    ("churn-", "ends with a hyphen"),
    ("ch--urn", "a double hyphen"),
]

# Lists refused as a whole: the second name collides with the first.
COLLIDING_LISTS: list[tuple[list[str], str]] = [
    (["churn", "churn"], "a duplicate"),
    (["churn", "Churn"], "a case collision"),
    (["churn", "churn_"], "a trailing separator collision"),
    (["churn", "churn-"], "a trailing hyphen collision"),
    (["fraud-model", "fraud_model"], "hyphen and underscore map to the same schema"),
    (["fraud-model", "fraud.model"], "a dot separator"),
    (["churn", " churn"], "surrounding whitespace"),
]

# Config items that are not names at all (JSON values inside the projects list).
NON_STRINGS: list[tuple[Any, str]] = [
    (123, "a number"),
    (None, "null"),
    (True, "a boolean"),
    ([], "a list"),
    ({"name": None}, "an object whose name is null"),
    ({"name": 7}, "an object whose name is a number"),
    ({}, "an object without a name"),
]
