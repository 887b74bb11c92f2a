"""Remove what MLflow marked deleted from one project's schema and artifact root.

In this order, each step resumable (a gc killed at any point and run again finishes the job
and leaves no orphan): for each entity, first its artifacts, then the rows that reference it
(children first, in batches of ``batch_rows``, each batch its own short transaction), its own
row last, so an interrupted entity is found again by the next run.

1. deleted runs older than the cut-off: artifacts, metrics, latest metrics, params, tags,
   inputs and their tags, logged-model metrics, assessments and entity associations of the
   run, then the run;
2. logged models deleted (or in a deleted experiment) before the cut-off: artifacts,
   metrics, params, tags, inputs, associations, then the model;
3. deleted experiments older than the cut-off whose runs and models are all gone: their
   traces (with spans, tags, metadata, assessments), datasets, scorers, issues, review
   queues, label schemas, tags, rollups, the rest of their default artifact location, then
   the experiment;
4. with a trace retention: traces older than it, in every experiment.

Never anything that is not deleted: a deleted run stays (and is reported) while a registered
model version uses its artifacts or a live logged model holds metrics it logged (the foreign
key would cascade them away); a deleted logged model stays while a model version uses it; a
deleted experiment stays while it holds a run or model that stays (for example one restored
after the experiment was deleted). Artifacts outside the project's root are never touched.

``dry_run`` reports the same figures and changes nothing: the same steps count instead of
delete, and rows that an earlier step would have taken are not counted twice.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .artifacts import ArtifactStore, owned_prefix

DEFAULT_BATCH_ROWS = 5000
ID_PAGE = 200  # entities fetched per query
TRACE_PAGE = 200  # traces deleted per batch
KEPT_SHOWN = 20
ARTIFACT_LOCATION_TAG = "mlflow.artifactLocation"
DELETED = "deleted"


@dataclass(frozen=True)
class Options:
    older_than_ms: int = 0  # only what was deleted at least this long ago (0: everything)
    trace_retention_ms: int | None = None  # None: traces are removed only with their experiment
    dry_run: bool = False
    batch_rows: int = DEFAULT_BATCH_ROWS
    now_ms: int | None = None  # for tests; default: the clock


@dataclass
class Report:
    project: str
    dry_run: bool
    runs: int = 0
    logged_models: int = 0
    experiments: int = 0
    traces: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    objects: int = 0
    bytes: int = 0
    kept: list[str] = field(default_factory=list)
    outside: int = 0  # entities whose artifacts live outside the project's root (left alone)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "dry_run": self.dry_run,
            "runs": self.runs,
            "logged_models": self.logged_models,
            "experiments": self.experiments,
            "traces": self.traces,
            "rows": self.total_rows,
            "rows_by_table": {t: n for t, n in sorted(self.rows.items()) if n},
            "objects": self.objects,
            "bytes": self.bytes,
            "kept": len(self.kept),
            "artifacts_outside_root": self.outside,
        }

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        tables = ", ".join(f"{t} {n:,}" for t, n in sorted(self.rows.items()) if n)
        out = [
            f"project {self.project}: {verb} {_count(self.runs, 'run')}, "
            f"{_count(self.logged_models, 'logged model')}, "
            f"{_count(self.experiments, 'experiment')}, {_count(self.traces, 'trace')}; "
            f"{_count(self.total_rows, 'row')}; {_count(self.objects, 'object')} "
            f"({human_bytes(self.bytes)})"
            + (" [dry run: nothing changed]" if self.dry_run else ""),
        ]
        if tables:
            out.append(f"  rows: {tables}")
        if self.kept:
            out.append(f"  kept (deleted, but something that stays needs them): {len(self.kept):,}")
            out += [f"    {reason}" for reason in self.kept[:KEPT_SHOWN]]
            if len(self.kept) > KEPT_SHOWN:
                out.append(f"    … and {len(self.kept) - KEPT_SHOWN:,} more")
        if self.outside:
            out.append(
                f"  {self.outside:,} had artifacts outside the project's root: their rows "
                "are removed, their artifacts left where they are"
            )
        return out


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Rows:
    """Rows of ``table`` matching ``where`` (parameters ``:id``, or ``:ids`` expanded).

    ``runs_of`` is an SQL expression over the same rows naming a run they also reference,
    when another step may already have taken them (counted once in a dry run)."""

    table: str
    where: str
    runs_of: str | None = None
    join: str = ""  # for runs_of: extra FROM clause


RUN_INPUTS = (
    "(destination_type = 'RUN' AND destination_id = :id) OR "
    "(source_type IN ('RUN_INPUT', 'RUN_OUTPUT') AND source_id = :id)"
)
RUN_ROWS = (
    Rows("metrics", "run_uuid = :id"),
    Rows("latest_metrics", "run_uuid = :id"),
    Rows("params", "run_uuid = :id"),
    Rows("tags", "run_uuid = :id"),
    Rows("logged_model_metrics", "run_id = :id"),
    Rows("assessments", "run_id = :id"),
    Rows("input_tags", f"input_uuid IN (SELECT input_uuid FROM inputs WHERE {RUN_INPUTS})"),
    Rows("inputs", RUN_INPUTS),
    Rows(
        "entity_associations",
        "(source_type = 'run' AND source_id = :id) OR (destination_type = 'run' AND "
        "destination_id = :id)",
    ),
    Rows("runs", "run_uuid = :id"),
)

MODEL_INPUTS = "destination_type IN ('MODEL_INPUT', 'MODEL_OUTPUT') AND destination_id = :id"
OTHER_SIDE_RUN = (
    "CASE WHEN source_type = 'run' THEN source_id WHEN destination_type = 'run' "
    "THEN destination_id END"
)
MODEL_ROWS = (
    Rows("logged_model_metrics", "model_id = :id", runs_of="run_id"),
    Rows("logged_model_params", "model_id = :id"),
    Rows("logged_model_tags", "model_id = :id"),
    Rows(
        "input_tags",
        f"input_uuid IN (SELECT input_uuid FROM inputs WHERE {MODEL_INPUTS})",
        runs_of="i.source_id",
        join="JOIN inputs i ON i.input_uuid = input_tags.input_uuid",
    ),
    Rows("inputs", MODEL_INPUTS, runs_of="source_id"),
    Rows(
        "entity_associations",
        "(source_type = 'model' AND source_id = :id) OR (destination_type = 'model' AND "
        "destination_id = :id)",
        runs_of=OTHER_SIDE_RUN,
    ),
    Rows("logged_models", "model_id = :id"),
)

TRACE_ROWS = (
    Rows("span_metrics", "trace_id IN :ids"),
    Rows("spans", "trace_id IN :ids"),
    Rows("assessments", "trace_id IN :ids", runs_of="run_id"),
    Rows("trace_metrics", "request_id IN :ids"),
    Rows("trace_tags", "request_id IN :ids"),
    Rows("trace_request_metadata", "request_id IN :ids"),
    Rows("review_queue_items", "item_type = 'trace' AND item_id IN :ids"),
    Rows(
        "entity_associations",
        "(source_type = 'trace' AND source_id IN :ids) OR "
        "(destination_type = 'trace' AND destination_id IN :ids)",
        runs_of=OTHER_SIDE_RUN,
    ),
    Rows("trace_info", "request_id IN :ids"),
)

EXPERIMENT_DATASET_INPUTS = (
    "source_type = 'DATASET' AND source_id IN (SELECT dataset_uuid FROM datasets "
    "WHERE experiment_id = :id)"
)
QUEUES = "queue_id IN (SELECT queue_id FROM review_queues WHERE experiment_id = :id)"
SCORERS = "scorer_id IN (SELECT scorer_id FROM scorers WHERE experiment_id = :id)"
EXPERIMENT_ROWS = (
    Rows(
        "input_tags",
        f"input_uuid IN (SELECT input_uuid FROM inputs WHERE {EXPERIMENT_DATASET_INPUTS})",
        runs_of="i.destination_id",
        join="JOIN inputs i ON i.input_uuid = input_tags.input_uuid",
    ),
    Rows("inputs", EXPERIMENT_DATASET_INPUTS, runs_of="destination_id"),
    Rows("datasets", "experiment_id = :id"),
    Rows("experiment_tags", "experiment_id = :id"),
    Rows("online_scoring_configs", f"experiment_id = :id OR {SCORERS}"),
    Rows("scorer_versions", SCORERS),
    Rows("scorers", "experiment_id = :id"),
    Rows("issues", "experiment_id = :id"),
    Rows("review_queue_items", QUEUES),
    Rows("review_queue_label_schemas", QUEUES),
    Rows("review_queue_users", QUEUES),
    Rows("review_queues", "experiment_id = :id"),
    Rows("label_schemas", "experiment_id = :id"),
    Rows("sql_trace_rollup_rebuild_queue", "experiment_id = :id"),
    Rows("sql_trace_metric_daily_rollups", "experiment_id = :id"),
    Rows("sql_span_cost_daily_rollups", "experiment_id = :id"),
    Rows("sql_assessment_daily_rollups", "experiment_id = :id"),
    Rows(
        "entity_associations",
        "(source_type = 'experiment' AND source_id = :sid) OR "
        "(destination_type = 'experiment' AND destination_id = :sid)",
    ),
    Rows("experiments", "experiment_id = :id"),
)

# Every table the steps above touch: the schema check refuses a schema without one of them.
TABLES = frozenset(
    rows.table for group in (RUN_ROWS, MODEL_ROWS, TRACE_ROWS, EXPERIMENT_ROWS) for rows in group
) | {"model_versions"}


class GcError(Exception):
    """gc cannot run; the message says why and what to do."""


class Collector:
    def __init__(
        self,
        engine: Any,
        store: ArtifactStore,
        options: Options,
        project: str,
        say: Callable[[str], None],
    ) -> None:
        self.engine = engine
        self.store = store
        self.options = options
        self.say = say
        self.report = Report(project, options.dry_run)
        now = options.now_ms if options.now_ms is not None else int(time.time() * 1000)
        self.cutoff = now - options.older_than_ms
        self.trace_cutoff = (
            None if options.trace_retention_ms is None else now - options.trace_retention_ms
        )
        self.mysql = engine.dialect.name in ("mysql", "mariadb")
        # What this pass has taken (a dry run must not count it again); ids only.
        self.collected_runs: set[str] = set()
        self.collected_models: set[str] = set()
        self.collected_experiments: set[int] = set()
        self.counted_prefixes: set[str] = set()  # dry run: artifact prefixes already counted

    # -- SQL ----------------------------------------------------------------------------------

    def _query(self, sql: str, params: dict[str, Any]) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(self._text(sql, params), params))

    @staticmethod
    def _text(sql: str, params: dict[str, Any]) -> Any:
        import sqlalchemy

        statement = sqlalchemy.text(sql)
        if "ids" in params:
            statement = statement.bindparams(sqlalchemy.bindparam("ids", expanding=True))
        return statement

    def _rows(self, rows: Rows, params: dict[str, Any], label: str) -> None:
        if self.options.dry_run:
            count = self._count(rows, params)
        else:
            count = self._delete(rows, params, label)
        self.report.rows[rows.table] += count

    def _count(self, rows: Rows, params: dict[str, Any]) -> int:
        if rows.runs_of is None or not self.collected_runs:
            sql = f"SELECT COUNT(*) FROM {rows.table} WHERE {rows.where}"
            [(count,)] = self._query(sql, params)
            return int(count)
        grouped = self._query(
            f"SELECT {rows.runs_of}, COUNT(*) FROM {rows.table} {rows.join} "
            f"WHERE {self._qualified(rows)} GROUP BY {rows.runs_of}",
            params,
        )
        return sum(int(n) for run, n in grouped if run not in self.collected_runs)

    @staticmethod
    def _qualified(rows: Rows) -> str:
        """``rows.where`` usable next to ``rows.join``: its bare columns name ``rows.table``."""
        if not rows.join:
            return rows.where
        column = rows.where.split(" ", 1)
        return f"{rows.table}.{column[0]} {column[1]}"

    def _delete(self, rows: Rows, params: dict[str, Any], label: str) -> int:
        import sqlalchemy

        batch = self.options.batch_rows
        if self.mysql:
            sql = f"DELETE FROM {rows.table} WHERE {rows.where} LIMIT {batch}"
        else:  # SQLite has no DELETE … LIMIT by default
            sql = (
                f"DELETE FROM {rows.table} WHERE rowid IN (SELECT rowid FROM {rows.table} "
                f"WHERE {rows.where} LIMIT {batch})"
            )
        statement = self._text(sql, params)
        total = 0
        while True:
            try:
                with self.engine.begin() as connection:
                    deleted = connection.execute(statement, params).rowcount
            except sqlalchemy.exc.IntegrityError as exc:
                raise _Referenced(rows.table, str(exc.orig)) from exc
            total += deleted
            if deleted < batch:
                return total
            self.say(f"{label}: {total:,} rows of {rows.table} deleted so far")

    def _objects(self, prefix: str) -> None:
        for page in self.store.pages(prefix):
            if self.options.dry_run:
                # What an earlier step counted is gone by now in a real run.
                page = [o for o in page if not self._counted_already(o.key)]
            else:
                self.store.delete(page)
            self.report.objects += len(page)
            self.report.bytes += sum(o.size for o in page)
        if self.options.dry_run:
            self.counted_prefixes.add(prefix)

    def _counted_already(self, key: str) -> bool:
        parts = key.split("/")
        return any("/".join(parts[:i]) in self.counted_prefixes for i in range(1, len(parts)))

    def _still(self, sql: str, params: dict[str, Any]) -> bool:
        """Read again just before deleting: a user may have restored it meanwhile."""
        return bool(self._query(sql, params))

    def _keep(self, reason: str) -> None:
        self.report.kept.append(reason)

    def _keyset(self, sql: str, params: dict[str, Any], first: Any) -> Iterator[Any]:
        """Rows of ``sql`` (ordered by its first column, ``> :after``), page by page."""
        after = first
        while True:
            page = self._query(sql, {**params, "after": after, "page": ID_PAGE})
            yield from page
            if len(page) < ID_PAGE:
                return
            after = page[-1][0]

    def _deleted_since_cutoff(self, column: str) -> str:
        """Deleted before the cut-off; a missing time (runs deleted by an MLflow that did not
        record it) counts only when everything deleted is collected."""
        if self.options.older_than_ms == 0:
            return f"({column} <= :cutoff OR {column} IS NULL)"
        return f"{column} <= :cutoff"

    # -- the steps ----------------------------------------------------------------------------

    def run(self) -> Report:
        if self.trace_cutoff is not None:
            from mlflow.store.tracking.utils.sql_trace_rollups import rollups_enabled

            if rollups_enabled():
                raise GcError(
                    "trace retention with SQL trace rollups on (MLFLOW_SQL_TRACE_ROLLUPS_ENABLED) "
                    "would leave stale rollups: turn rollups off or run gc without a retention"
                )
        self._runs()
        self._logged_models()
        self._experiments()
        if self.trace_cutoff is not None:
            self._retained_traces()
        return self.report

    def _runs(self) -> None:
        undated = 0
        if self.options.older_than_ms:
            [(undated,)] = self._query(
                "SELECT COUNT(*) FROM runs WHERE lifecycle_stage = 'deleted' "
                "AND deleted_time IS NULL",
                {},
            )
        pages = self._keyset(
            "SELECT run_uuid, artifact_uri FROM runs WHERE lifecycle_stage = 'deleted' AND "
            f"{self._deleted_since_cutoff('deleted_time')} AND run_uuid > :after "
            "ORDER BY run_uuid LIMIT :page",
            {"cutoff": self.cutoff},
            "",
        )
        for run_id, uri in pages:
            self._run(str(run_id), uri)
        if undated:
            self._keep(
                f"{undated:,} deleted runs have no deletion time (deleted by an old MLflow): "
                "only gc without --older-than removes them"
            )

    def _run_pin(self, run_id: str) -> str | None:
        found = self._query(
            "SELECT name, version FROM model_versions WHERE current_stage <> 'Deleted_Internal' "
            "AND (run_id = :id OR source LIKE :inside OR storage_location LIKE :inside "
            "OR source LIKE :runs) LIMIT 1",
            {"id": run_id, "inside": f"%/{run_id}/%", "runs": f"runs:/{run_id}/%"},
        )
        if found:
            name, version = found[0]
            return f"registered model {name!r} version {version} uses its artifacts"
        found = self._query(
            "SELECT m.model_id FROM logged_model_metrics m JOIN logged_models l "
            "ON l.model_id = m.model_id JOIN experiments e ON e.experiment_id = l.experiment_id "
            "WHERE m.run_id = :id AND l.lifecycle_stage <> 'deleted' AND "
            "e.lifecycle_stage <> 'deleted' LIMIT 1",
            {"id": run_id},
        )
        if found:
            return (
                f"logged model {found[0][0]} (not deleted) holds metrics this run logged "
                "(deleting the run would delete them)"
            )
        found = self._query(
            "SELECT experiment_id FROM experiments WHERE artifact_location LIKE :inside LIMIT 1",
            {"inside": f"%/{run_id}/artifacts%"},
        )
        if found:
            return f"experiment {found[0][0]} keeps its artifacts inside this run's"
        return None

    def _run(self, run_id: str, uri: str | None) -> None:
        pinned = self._run_pin(run_id)
        if pinned:
            self._keep(f"run {run_id}: {pinned}")
            return
        prefix = owned_prefix(self.store, uri, "run", run_id)
        if uri and prefix is None:
            self.report.outside += 1
        if not self._still(
            "SELECT 1 FROM runs WHERE run_uuid = :id AND lifecycle_stage = 'deleted'",
            {"id": run_id},
        ):
            return
        rows_before, objects_before = self.report.total_rows, self.report.objects
        if prefix:
            self._objects(prefix)
        label = f"run {run_id}"
        try:
            for rows in RUN_ROWS:
                self._rows(rows, {"id": run_id}, label)
        except _Referenced as exc:
            self._keep(f"{label}: {exc}")
            return
        self.report.runs += 1
        self.collected_runs.add(run_id)
        self._said(label, rows_before, objects_before)

    def _said(self, label: str, rows_before: int, objects_before: int) -> None:
        verb = "would remove" if self.options.dry_run else "removed"
        self.say(
            f"{label}: {verb} {self.report.total_rows - rows_before:,} rows, "
            f"{self.report.objects - objects_before:,} objects"
        )

    def _logged_models(self) -> None:
        # A logged model is deleted when it is, or when its experiment is (deleting an
        # experiment marks its runs deleted, not its models).
        experiment_deleted = self._deleted_since_cutoff("e.last_update_time")
        pages = self._keyset(
            "SELECT l.model_id, l.artifact_location FROM logged_models l JOIN experiments e "
            "ON e.experiment_id = l.experiment_id WHERE ((l.lifecycle_stage = 'deleted' AND "
            "l.last_updated_timestamp_ms <= :cutoff) OR (e.lifecycle_stage = 'deleted' AND "
            f"{experiment_deleted})) AND l.model_id > :after ORDER BY l.model_id LIMIT :page",
            {"cutoff": self.cutoff},
            "",
        )
        for model_id, uri in pages:
            self._logged_model(str(model_id), uri)

    def _logged_model(self, model_id: str, uri: str | None) -> None:
        label = f"logged model {model_id}"
        found = self._query(
            "SELECT name, version FROM model_versions WHERE current_stage <> 'Deleted_Internal' "
            "AND (source = :models OR source LIKE :below OR storage_location LIKE :inside) "
            "LIMIT 1",
            {
                "models": f"models:/{model_id}",
                "below": f"models:/{model_id}/%",
                "inside": f"%/models/{model_id}/%",
            },
        )
        if found:
            self._keep(f"{label}: registered model {found[0][0]!r} version {found[0][1]} uses it")
            return
        prefix = owned_prefix(self.store, uri, "logged model", model_id)
        if uri and prefix is None:
            self.report.outside += 1
        if not self._still(
            "SELECT 1 FROM logged_models l JOIN experiments e ON e.experiment_id = "
            "l.experiment_id WHERE l.model_id = :id AND "
            "(l.lifecycle_stage = 'deleted' OR e.lifecycle_stage = 'deleted')",
            {"id": model_id},
        ):
            return
        rows_before, objects_before = self.report.total_rows, self.report.objects
        if prefix:
            self._objects(prefix)
        try:
            for rows in MODEL_ROWS:
                self._rows(rows, {"id": model_id}, label)
        except _Referenced as exc:
            self._keep(f"{label}: {exc}")
            return
        self.report.logged_models += 1
        self.collected_models.add(model_id)
        self._said(label, rows_before, objects_before)

    def _experiments(self) -> None:
        pages = self._keyset(
            "SELECT experiment_id, artifact_location FROM experiments WHERE lifecycle_stage = "
            f"'deleted' AND {self._deleted_since_cutoff('last_update_time')} AND experiment_id "
            "> :after "
            "ORDER BY experiment_id LIMIT :page",
            {"cutoff": self.cutoff},
            -1,
        )
        for experiment_id, location in pages:
            self._experiment(int(experiment_id), location)

    def _left_in(self, experiment_id: int) -> str | None:
        """Why the experiment must stay: runs or models of it that this pass keeps."""
        params = {"id": experiment_id}
        runs = Counter(
            str(stage)
            for run_id, stage in self._keyset(
                "SELECT run_uuid, lifecycle_stage FROM runs WHERE experiment_id = :id AND "
                "run_uuid > :after ORDER BY run_uuid LIMIT :page",
                params,
                "",
            )
            if run_id not in self.collected_runs
        )
        models = sum(
            1
            for (model_id,) in self._keyset(
                "SELECT model_id FROM logged_models WHERE experiment_id = :id AND "
                "model_id > :after ORDER BY model_id LIMIT :page",
                params,
                "",
            )
            if model_id not in self.collected_models
        )
        if not runs and not models:
            return None
        held = []
        if runs:
            live = sum(n for stage, n in runs.items() if stage != DELETED)
            held.append(
                _count(sum(runs.values()), "run")
                + " stay in it"
                + (f" ({live:,} not deleted: restored after the experiment was)" if live else "")
            )
        if models:
            held.append(_count(models, "logged model") + " stay in it")
        return "; ".join(held)

    def _experiment(self, experiment_id: int, location: str | None) -> None:
        label = f"experiment {experiment_id}"
        held = self._left_in(experiment_id)
        if held:
            self._keep(f"{label}: {held}")
            return
        if not self._still(
            "SELECT 1 FROM experiments WHERE experiment_id = :id AND lifecycle_stage = 'deleted'",
            {"id": experiment_id},
        ):
            return
        rows_before, objects_before = self.report.total_rows, self.report.objects
        try:
            for ids in self._trace_pages("experiment_id = :experiment", experiment_id):
                self._traces(ids, label)
            prefix = owned_prefix(self.store, location, "experiment", str(experiment_id))
            if location and prefix is None:
                self.report.outside += 1
            if prefix and self._sweepable(prefix, experiment_id):
                self._objects(prefix)
            params = {"id": experiment_id, "sid": str(experiment_id)}
            for rows in EXPERIMENT_ROWS:
                self._rows(rows, params, label)
        except _Referenced as exc:
            self._keep(f"{label}: {exc}")
            return
        self.report.experiments += 1
        self.collected_experiments.add(experiment_id)
        self._said(label, rows_before, objects_before)

    def _sweepable(self, prefix: str, experiment_id: int) -> bool:
        """May the rest of the experiment's directory go? Not while anything that stays
        (another experiment's location, a registered model version) points inside it."""
        inside = f"%/{prefix}/%"
        found = self._query(
            "SELECT experiment_id FROM experiments WHERE experiment_id <> :id AND "
            "(artifact_location LIKE :inside OR artifact_location LIKE :proxied) LIMIT 1",
            {"id": experiment_id, "inside": inside, "proxied": f"mlflow-artifacts:/{prefix}/%"},
        )
        found += self._query(
            "SELECT name FROM model_versions WHERE current_stage <> 'Deleted_Internal' AND "
            "(storage_location LIKE :inside OR source LIKE :inside OR storage_location LIKE "
            ":proxied OR source LIKE :proxied) LIMIT 1",
            {"inside": inside, "proxied": f"mlflow-artifacts:/{prefix}/%"},
        )
        if found:
            self._keep(
                f"experiment {experiment_id}: the rest of its directory {prefix}/ stays "
                "(something that stays points inside it)"
            )
            return False
        return True

    def _trace_pages(self, where: str, experiment_id: int) -> Iterator[list[str]]:
        """Trace ids of one experiment matching ``where``, a batch at a time."""
        after = ""
        params: dict[str, Any] = {"experiment": experiment_id, "trace_cutoff": self.trace_cutoff}
        while True:
            page = [
                str(row[0])
                for row in self._query(
                    f"SELECT request_id FROM trace_info WHERE {where} AND request_id > :after "
                    "ORDER BY request_id LIMIT :page",
                    {**params, "after": after, "page": TRACE_PAGE},
                )
            ]
            if not page:
                return
            yield page
            if len(page) < TRACE_PAGE:
                return
            after = page[-1]

    def _traces(self, ids: list[str], label: str) -> None:
        for trace_id, uri in self._query(
            "SELECT request_id, value FROM trace_tags WHERE `key` = :key AND request_id IN :ids",
            {"key": ARTIFACT_LOCATION_TAG, "ids": ids},
        ):
            prefix = owned_prefix(self.store, uri, "trace", str(trace_id))
            if prefix:
                self._objects(prefix)
            elif uri:
                self.report.outside += 1
        for rows in TRACE_ROWS:
            self._rows(rows, {"ids": ids}, label)
        self.report.traces += len(ids)

    def _retained_traces(self) -> None:
        pages = self._keyset(
            "SELECT experiment_id FROM experiments WHERE experiment_id > :after "
            "ORDER BY experiment_id LIMIT :page",
            {},
            -1,
        )
        for (experiment_id,) in pages:
            if int(experiment_id) in self.collected_experiments:
                continue
            label = f"traces of experiment {experiment_id} past the retention"
            before = self.report.traces
            for ids in self._trace_pages(
                "experiment_id = :experiment AND timestamp_ms <= :trace_cutoff", int(experiment_id)
            ):
                self._traces(ids, label)
            if self.report.traces > before:
                verb = "would remove" if self.options.dry_run else "removed"
                self.say(f"{label}: {verb} {self.report.traces - before:,} traces")


class _Referenced(Exception):
    """A foreign key outside what gc knows refuses the deletion (the entity is kept)."""

    def __init__(self, table: str, detail: str) -> None:
        super().__init__(f"the database refuses to delete its {table} rows ({detail})")
