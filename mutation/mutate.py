"""``./dev mutate MODULE``: mutation testing of the modules whose rules keep people out.

Each mutant is one classic change to the module's source (a condition dropped, a comparison
flipped, a regex class widened, a ``raise`` removed, ``fullmatch`` made ``match``, a set element
dropped, ...), written over the file in place, one at a time; the fast tests that cover the
module run against it, then, for the mutants they let live, the full relevant suite (end-to-end
tests included). A mutant that no test notices is a rule no test defends.

In place, not in a copy: the end-to-end tests start servers (``mlflow server --app-name aws-iam``,
the schema provider) that import the module from the checkout, and ``helper/`` is also imported
as ``mlflow_aws.helper``; a copy or an import hook would test neither. The original is restored
after every mutant, and on the next run if a run was killed (``<file>.mutation-original``).

Mutants that cannot change behaviour are listed in ``mutation/equivalent.toml`` under their
stable id (``<function>/<operator>/<hash of the change>``: it survives edits elsewhere in the
file), each with the reason; they are reported as equivalent, not as survivors.

Not in CI: a run takes minutes (fast tests) to an hour (survivors through the full suite).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = Path(__file__).resolve().parent / "equivalent.toml"
BACKUP_SUFFIX = ".mutation-original"


@dataclass(frozen=True)
class Target:
    """A module under mutation and the tests that defend it."""

    fast: tuple[str, ...]  # pytest arguments: the unit tests (run with -m "not slow")
    full: tuple[str, ...]  # pytest arguments: everything relevant, end to end included


# The tests that import each module (directly, or through the program/provider/helper/server
# they drive). "fast" excludes tests marked slow.
TARGETS: dict[str, Target] = {
    "mlflow_aws/names.py": Target(
        fast=(
            "tests/test_names_rules.py",
            "tests/test_hostile_input.py",
            "-k",
            "not program and not helper",
        ),
        full=(
            "tests/test_names_rules.py",
            "tests/test_hostile_input.py",
            "tests/test_config.py",
            "tests/test_helper_unit.py",
            "tests/test_schema_provider.py",
            "tests/test_program.py",
        ),
    ),
    "projects/schema_sql.py": Target(
        fast=("tests/test_schema_sql_rules.py",),
        full=(
            "tests/test_schema_sql_rules.py",
            "tests/test_schema_provider.py",
            "tests/test_hostile_input.py",
        ),
    ),
    "mlflow_aws/auth/token.py": Target(
        fast=("tests/test_token_rules.py", "tests/test_auth_rules.py", "tests/test_auth_unit.py"),
        full=(
            "tests/test_token_rules.py",
            "tests/test_auth_rules.py",
            "tests/test_auth_unit.py",
            "tests/test_auth_e2e.py",
        ),
    ),
    "mlflow_aws/auth/sign_in_app.py": Target(
        # the layers' own tests first (most mutants die there in seconds), the token's last
        fast=(
            "tests/test_auth_aws_answers.py",
            "tests/test_auth_asgi.py",
            "tests/test_auth_rules.py",
            "tests/test_auth_unit.py",
            "tests/test_token_rules.py",
        ),
        full=(
            "tests/test_auth_rules.py",
            "tests/test_token_rules.py",
            "tests/test_auth_unit.py",
            "tests/test_auth_asgi.py",
            "tests/test_auth_aws_answers.py",
            "tests/test_auth_revocation.py",
            "tests/test_auth_e2e.py",
        ),
    ),
    "helper/proxy.py": Target(
        # test_proxy_security.py waits on sockets (~30 s a run): only for the fast survivors;
        # test_proxy_wire.py (the wire rules, ~9 s) first, so most mutants die in seconds;
        # test_auth_unit.py's proxy checks are repeated in test_proxy_rules.py;
        # test_proxy_http_attacks.py (the attacks on the HTTP code, ~15 s, mostly waiting);
        # test_serve_remote.py (the command: what it prints, how it stops and fails, ~3 s)
        fast=(
            "tests/test_proxy_wire.py",
            "tests/test_proxy_rules.py",
            "tests/test_proxy_http_attacks.py",
            "tests/test_serve_remote.py",
        ),
        full=(
            "tests/test_proxy_wire.py",
            "tests/test_proxy_rules.py",
            "tests/test_proxy_http_attacks.py",
            "tests/test_serve_remote.py",
            "tests/test_proxy_security.py",
            "tests/test_auth_unit.py",
            "tests/test_auth_e2e.py",
        ),
    ),
}

# What a widened regex class lets in: quotes, the backtick, separators of paths and statements.
HOSTILE_CHARACTERS = "'\"`/;\\\\ "
CASE_METHODS = frozenset({"lower", "upper", "strip", "rstrip", "lstrip", "casefold"})
REGEX_FUNCTIONS = frozenset({"compile", "fullmatch", "match", "search", "split", "sub", "findall"})
MATCHERS = {"fullmatch": "match", "match": "search"}
FLIPPED = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
    ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip
BOUNDARY = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}


@dataclass(frozen=True)
class Mutant:
    id: str  # stable: <function>/<operator>/<hash>
    line: int
    operator: str
    original: str
    replacement: str
    start: int  # character offsets into the source
    end: int

    def apply(self, source: str) -> str:
        return source[: self.start] + self.replacement + source[self.end :]

    def describe(self) -> str:
        return f"{self.operator}: {_short(self.original)} -> {_short(self.replacement)}"


def _short(text: str, limit: int = 90) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


# -- making mutants -------------------------------------------------------------------------------


def _regex_mutations(pattern: str) -> Iterator[tuple[str, str]]:
    """(operator, mutated pattern) for one regular expression."""
    for match in re.finditer(r"(?<!\\)\[(\^?)((?:\\.|[^\]\\])+)\]", pattern):
        negated, body = match.groups()
        start, end = match.span()
        if negated:
            yield "regex-class-negation-dropped", pattern[:start] + f"[{body}]" + pattern[end:]
        else:
            # first: after a trailing "-" they would make a range (a pattern re refuses)
            widened = f"[{HOSTILE_CHARACTERS}{body}]"
            yield "regex-class-widened", pattern[:start] + widened + pattern[end:]
    for match in re.finditer(r"(?<!\\)\{(\d+)(?:,(\d*))?\}", pattern):
        low, high = match.group(1), match.group(2)
        start, end = match.span()
        lo = int(low)
        if high is None:
            yield "regex-count-widened", pattern[:start] + f"{{{lo - 1},{lo}}}" + pattern[end:]
            yield "regex-count-widened", pattern[:start] + f"{{{lo},{lo + 1}}}" + pattern[end:]
        else:
            if lo > 0:
                yield "regex-count-widened", f"{pattern[:start]}{{{lo - 1},{high}}}{pattern[end:]}"
            if high:
                yield (
                    "regex-count-widened",
                    f"{pattern[:start]}{{{low},{int(high) + 1}}}" + (pattern[end:]),
                )
    for match in re.finditer(r"(?<![\\(])\+", pattern):
        yield "regex-plus-to-star", pattern[: match.start()] + "*" + pattern[match.end() :]
    for match in re.finditer(r"(?<!\\)\)\?", pattern):  # an optional group made required
        yield "regex-optional-required", pattern[: match.start() + 1] + pattern[match.end() :]


class _Collector(ast.NodeVisitor):
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.offsets = [0]
        for line in self.lines:
            self.offsets.append(self.offsets[-1] + len(line))
        self.scope: list[str] = []
        self.found: list[tuple[str, str, ast.AST, str]] = []  # (scope, operator, node, new text)
        self.skipped: set[int] = set()
        self.pattern_names: set[str] = set()  # names whose string is (part of) a regex

    def find_pattern_names(self, tree: ast.AST) -> None:
        """Names used in the pattern of a ``re.<function>(...)`` call (``re.compile(PATTERN)``,
        ``re.compile(rf"...{PATTERN}...")``): their string constants are regexes too."""
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            func = node.func
            is_re = isinstance(func.value, ast.Name) and func.value.id == "re"
            if is_re and func.attr in REGEX_FUNCTIONS and node.args:
                self.pattern_names.update(
                    n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name)
                )

    def visit_Assign(self, node: ast.Assign) -> None:
        named = {t.id for t in node.targets if isinstance(t, ast.Name)}
        if named & self.pattern_names:
            self._regex(node.value)
        self.generic_visit(node)

    def offset(self, line: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets
        text = self.lines[line - 1].encode()[:col].decode()
        return self.offsets[line - 1] + len(text)

    def add(self, operator: str, node: ast.AST, replacement: str) -> None:
        self.found.append(("/".join(self.scope) or "<module>", operator, node, replacement))

    def _scoped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        for decorator in node.decorator_list:  # @dataclass(frozen=True): not a rule
            self.skipped.update(id(n) for n in ast.walk(decorator))
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    # statements
    def visit_Raise(self, node: ast.Raise) -> None:
        self.add("raise-removed", node, "pass")
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        # an early return (or continue) in a branch removed: the check it ends is skipped
        for statement in node.body:
            if isinstance(statement, ast.Return | ast.Continue):
                self.add("early-return-removed", statement, "pass")
        self.add("condition-always-true", node.test, "True")
        self.generic_visit(node)

    # expressions
    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        for i in range(len(node.values)):
            rest = node.values[:i] + node.values[i + 1 :]
            text = ast.unparse(rest[0] if len(rest) == 1 else ast.BoolOp(node.op, rest))
            self.add("condition-dropped", node, f"({text})")
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self.add("and-or-swapped", node, f"({ast.unparse(ast.BoolOp(other, node.values))})")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, ast.Not):
            self.add("not-dropped", node, f"({ast.unparse(node.operand)})")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            for operator, table in (("comparison-flipped", FLIPPED), ("boundary-moved", BOUNDARY)):
                new = table.get(type(op))
                if new is None:
                    continue
                ops = [*node.ops[:i], new(), *node.ops[i + 1 :]]
                text = ast.unparse(ast.Compare(node.left, ops, node.comparators))
                self.add(operator, node, f"({text})")
        self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.add("conditional-always-body", node, f"({ast.unparse(node.body)})")
        self.add("conditional-always-else", node, f"({ast.unparse(node.orelse)})")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            if func.attr in MATCHERS:
                self.add(f"{func.attr}-to-{MATCHERS[func.attr]}", func,
                         f"{ast.unparse(func.value)}.{MATCHERS[func.attr]}")  # fmt: skip
            if func.attr in CASE_METHODS and not node.args and not node.keywords:
                self.add(f"{func.attr}-dropped", node, f"({ast.unparse(func.value)})")
            is_re = isinstance(func.value, ast.Name) and func.value.id == "re"
            if is_re and func.attr in REGEX_FUNCTIONS and node.args:
                self._regex(node.args[0])
        self.generic_visit(node)

    def _regex(self, node: ast.expr) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for operator, pattern in _regex_mutations(node.value):
                self.add(operator, node, repr(pattern))

    def visit_Set(self, node: ast.Set) -> None:
        self._elements(node.elts, node, "{", "}")
        self.generic_visit(node)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        constants = all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
        if constants and len(node.elts) > 1:
            self._elements(node.elts, node, "(", ",)")
        self.generic_visit(node)

    def _elements(self, elements: list[ast.expr], node: ast.AST, left: str, right: str) -> None:
        if len(elements) < 2:
            return
        for i in range(len(elements)):
            rest = elements[:i] + elements[i + 1 :]
            self.add("element-dropped", node, left + ", ".join(map(ast.unparse, rest)) + right)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, bool) and id(node) not in self.skipped:
            self.add("boolean-flipped", node, str(not node.value))


def mutants_of(source: str) -> list[Mutant]:
    collector = _Collector(source)
    tree = ast.parse(source)
    collector.find_pattern_names(tree)
    collector.visit(tree)
    mutants: list[Mutant] = []
    seen: dict[str, int] = {}
    for scope, operator, node, replacement in collector.found:
        line, col = node.lineno, node.col_offset  # type: ignore[attr-defined]
        end_line, end_col = node.end_lineno, node.end_col_offset  # type: ignore[attr-defined]
        start, end = collector.offset(line, col), collector.offset(end_line, end_col)
        original = source[start:end]
        if original == replacement:
            continue
        key = f"{scope}|{operator}|{original}|{replacement}"
        seen[key] = seen.get(key, 0) + 1
        digest = hashlib.sha256(f"{key}|{seen[key]}".encode()).hexdigest()[:8]
        candidate = Mutant(f"{scope}/{operator}/{digest}", line, operator, original, replacement,
                           start, end)  # fmt: skip
        try:
            compile(candidate.apply(source), "<mutant>", "exec")
        except SyntaxError:
            continue
        mutants.append(candidate)
    return sorted(mutants, key=lambda m: (m.start, m.id))


# -- running them ---------------------------------------------------------------------------------


def equivalents(module: str) -> dict[str, str]:
    if not EQUIVALENT_FILE.exists():
        return {}
    table = tomllib.loads(EQUIVALENT_FILE.read_text()).get(module, {})
    return {str(k): str(v) for k, v in table.items()}


def _drop_bytecode(path: Path) -> None:
    for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
        cached.unlink(missing_ok=True)


def restore_if_interrupted(path: Path) -> None:
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if backup.exists():
        print(f"restoring {path} from a killed run's {backup.name}", file=sys.stderr)
        path.write_bytes(backup.read_bytes())
        backup.unlink()
        _drop_bytecode(path)


def _pytest_args(args: tuple[str, ...], fast: bool) -> list[str]:
    return ["-x", "-q", "-p", "no:cacheprovider", *args, *(["-m", "not slow"] if fast else [])]


def run_tests(args: tuple[str, ...], fast: bool, timeout: float) -> tuple[bool, float]:
    """(all passed, seconds): pytest in a new process (and process group, killed whole)."""
    command = [sys.executable, "-m", "pytest", *_pytest_args(args, fast)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return False, time.monotonic() - started  # a mutant that hangs the tests is noticed
    # 0: passed; 5: nothing collected (counts as nothing noticing)
    return code in (0, 5), time.monotonic() - started


class WarmRunner:
    """The fast tests in a child forked from a process that has already imported pytest and
    every third-party module they use (collected once here), so a mutant costs its tests, not
    ~5 s of imports. The repository's own modules are forgotten before forking: each child
    imports them again, from the mutated file."""

    def __init__(self, args: tuple[str, ...]) -> None:
        import pytest

        self.args = _pytest_args(args, fast=True)
        os.chdir(ROOT)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            pytest.main(["--collect-only", *self.args])
        root = str(ROOT) + os.sep
        for name, module in list(sys.modules.items()):
            where = getattr(module, "__file__", None) or ""
            if where.startswith(root) and ".venv" not in where:
                del sys.modules[name]

    def run(self, timeout: float) -> tuple[bool, float]:
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: its own process group, quiet, no bytecode of a mutant
            code = 3
            try:
                os.setpgid(0, 0)
                sys.dont_write_bytecode = True
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                import pytest

                code = int(pytest.main(self.args))
            finally:
                os._exit(code)
        deadline = started + timeout
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError
                time.sleep(0.02)
        except (TimeoutError, KeyboardInterrupt, SystemExit) as stopped:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the child and whatever its tests started
            os.waitpid(pid, 0)
            if not isinstance(stopped, TimeoutError):
                raise
            return False, time.monotonic() - started
        code = os.waitstatus_to_exitcode(status)
        return code in (0, 5), time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev mutate", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("module", choices=sorted(TARGETS), help="the module to mutate")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--fast-only", action="store_true",
                        help="do not run the full suite for the fast tests' survivors")  # fmt: skip
    parser.add_argument("--only", action="append", default=[], metavar="ID",
                        help="run only this mutant (repeatable)")  # fmt: skip
    options = parser.parse_args(argv)

    target = TARGETS[options.module]
    path = ROOT / options.module
    restore_if_interrupted(path)
    original = path.read_text()
    known = equivalents(options.module)
    mutants = mutants_of(original)
    stale = sorted(set(known) - {m.id for m in mutants})
    if options.only:
        mutants = [m for m in mutants if m.id in options.only]
    if options.list:
        for m in mutants:
            mark = "  (equivalent)" if m.id in known else ""
            print(f"{options.module}:{m.line} {m.describe()}  [{m.id}]{mark}")
        return 0

    print(f"==> {options.module}: {len(mutants)} mutants; baseline fast tests", file=sys.stderr)
    passed, seconds = run_tests(target.fast, fast=True, timeout=1800)
    warm = WarmRunner(target.fast)
    if not passed:
        print("error: the fast tests fail on the unmutated module; fix them first", file=sys.stderr)
        return 1
    fast_timeout = max(60.0, seconds * 5)
    # Stopped (kill, Ctrl-C): the finally below still puts the original back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    backup.write_text(original)
    fast_killed: list[Mutant] = []
    full_killed: list[Mutant] = []
    survived: list[Mutant] = []
    equivalent: list[Mutant] = []
    try:
        fast_survivors: list[Mutant] = []
        for n, mutant in enumerate(mutants, 1):
            if mutant.id in known:
                equivalent.append(mutant)
                continue
            path.write_text(mutant.apply(original))
            _drop_bytecode(path)
            passed, _ = warm.run(timeout=fast_timeout)
            verdict = "survived the fast tests" if passed else "killed"
            print(f"  [{n}/{len(mutants)}] {options.module}:{mutant.line} {mutant.describe()}: "
                  f"{verdict}", file=sys.stderr, flush=True)  # fmt: skip
            (fast_survivors if passed else fast_killed).append(mutant)
        if fast_survivors and not options.fast_only:
            print(f"==> {len(fast_survivors)} survivors through the full suite", file=sys.stderr)
        for mutant in fast_survivors:
            if options.fast_only:
                survived.append(mutant)
                continue
            path.write_text(mutant.apply(original))
            _drop_bytecode(path)
            passed, _ = run_tests(target.full, fast=False, timeout=3600)
            print(f"  {options.module}:{mutant.line} {mutant.describe()}: "
                  f"{'SURVIVED' if passed else 'killed'}", file=sys.stderr, flush=True)  # fmt: skip
            (survived if passed else full_killed).append(mutant)
    finally:
        path.write_text(original)
        backup.unlink(missing_ok=True)
        _drop_bytecode(path)

    print(f"\n{options.module}")
    for m in survived:
        print(f"  SURVIVED   {options.module}:{m.line} {m.describe()}  [{m.id}]")
    for m in equivalent:
        print(f"  equivalent {options.module}:{m.line} {m.describe()}  [{m.id}]\n"
              f"             because {known[m.id]}")  # fmt: skip
    for stale_id in stale:
        print(f"  stale entry in {EQUIVALENT_FILE.name} (no such mutant now): {stale_id}")
    live = len(mutants) - len(equivalent)
    fast_score = 100.0 * len(fast_killed) / live if live else 100.0
    total = len(fast_killed) + len(full_killed)
    print(f"  mutants {len(mutants)}: equivalent {len(equivalent)}, killed {total} "
          f"(fast tests {len(fast_killed)}, {fast_score:.0f}% of {live}; full suite "
          f"{len(full_killed)}{', not run' if options.fast_only else ''}), "
          f"survived {len(survived)}")  # fmt: skip
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
