"""The characters of every password and secret the stack or the helper makes or accepts: one
definition (the project and admin passwords, the checks of them, the helper's run secret).

RFC 3986's unreserved characters: letters, digits and ``- _ . ~``. None needs quoting in a URL
(the connection bundle's database URI), and none can end or escape a MySQL string literal
(``projects/schema_sql.py`` writes a project password as one: ``IDENTIFIED BY`` takes nothing
else).
"""

from __future__ import annotations

import re

UNRESERVED_SPECIALS = "-_.~"
# The project password is also written unquoted into env files and shell lines, where ``~`` at
# the start of a word expands to a home directory: it leaves ``~`` out.
SHELL_SAFE_SPECIALS = UNRESERVED_SPECIALS.replace("~", "")
# As a regular-expression character class, and as a sentence says it.
CHARACTER_CLASS = f"[A-Za-z0-9{re.escape(UNRESERVED_SPECIALS)}]"
SHOWN = "A-Z a-z 0-9 " + " ".join(UNRESERVED_SPECIALS)


def pattern(shortest: int, longest: int) -> re.Pattern[str]:
    """Between ``shortest`` and ``longest`` of the characters, nothing else (use fullmatch)."""
    return re.compile(f"{CHARACTER_CLASS}{{{shortest},{longest}}}")
