"""The shape every stage shares, and the helpers more than one stage needs.

A stage is a pure function over Arrow tables::

    def dedup(corpus: pa.Table, params: DedupParams) -> StageResult

It reads only its arguments, writes nothing to disk and never touches Prefect, so it can be called
from a notebook, a test or the CLI. The Prefect task in ``flows/`` loads the inputs from the store,
calls the function and writes the :class:`StageResult` back as one store entry.

Canonical columns (the CLI maps user column names onto these on the way in, and back on the way out):

* corpus rows: ``id`` (string, unique), ``text`` (string), ``domain`` (string)
* labelled rows: ``id``, ``text``, ``label`` (string)
* benchmark rows: see :data:`BENCHMARK_SCHEMA`
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import unicodedata
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.errors import WinnowError

#: One row per removed (or masked, flagged, relabelled) input row. ``evidence`` is a JSON object
#: whose keys depend on the stage (e.g. ``duplicate_of`` and ``jaccard`` for dedup).
LEDGER_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("stage", pa.string()),
        ("action", pa.string()),  # "drop", "mask", "flag" or "relabel"
        ("reason", pa.string()),  # short machine-readable cause, e.g. "exact_duplicate"
        ("evidence", pa.string()),  # JSON object
    ]
)

#: Evaluation benchmarks, one row per example. ``answer`` indexes ``choices`` for multiple-choice
#: items and is -1 otherwise; ``target`` is the reference answer text (the correct choice, or a
#: reference solution such as HumanEval's canonical completion).
BENCHMARK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("benchmark", pa.string()),
        ("question", pa.string()),
        ("choices", pa.list_(pa.string())),
        ("answer", pa.int64()),
        ("target", pa.string()),
    ]
)


@dataclass(frozen=True)
class TableStream:
    """An output table produced piece by piece, never whole in memory: the store writes it shard
    by shard as ``batches()`` yields it, and its content hash equals that of the same rows as one
    ``pa.Table`` (so a streamed output names the same downstream entries as an in-memory one).

    Attributes:
        schema: the table's schema (with metadata); every piece must have it.
        batches: called once by the writer; yields ``pa.Table`` or ``pa.RecordBatch`` pieces, or
            :class:`Shard` s, in row order.
    """

    schema: pa.Schema
    batches: "Callable[[], Iterable[pa.Table | pa.RecordBatch | Shard]]"

    def read_all(self) -> pa.Table:
        """Every row as one table (for small outputs and tests; the store never holds it whole)."""
        parts = [t if isinstance(t, pa.Table) else pa.Table.from_batches([t])
                 for piece in self.batches() for t in (piece.batches() if isinstance(piece, Shard) else [piece])]
        return pa.concat_tables(parts) if parts else self.schema.empty_table()


@dataclass(frozen=True)
class Shard:
    """A piece of a :class:`TableStream` meant to be one output shard (the rows derived from one
    input shard), whose rows can be read again. The writer hashes them first; where the cut makes
    them one shard and a file already in the store holds exactly these rows, it links that file
    instead of encoding them: ``stored`` (a corpus shard the stage left as it was) or a shard of an
    earlier entry of the same stage (last night's output, where tonight's rows come out the same).
    Encoding is most of what writing a shard costs; hashing its rows is not.

    Attributes:
        batches: yields the rows in order, a row group at a time; called again (to encode the rows)
            when no file can be linked.
        stored: ``(path, manifest record)`` of a stored shard whose rows these are exactly, or None.
    """

    batches: "Callable[[], Iterable[pa.Table]]"
    stored: "tuple[Any, dict[str, Any]] | None" = None


@dataclass
class StageResult:
    """What a stage returns.

    Attributes:
        tables: named output tables. ``"data"`` is the main output that the next stage reads;
            others are reports (e.g. contamination's per-example report). A table too big for
            memory may be a :class:`TableStream`.
        removed: the per-row ledger, in :data:`LEDGER_SCHEMA`.
        metrics: a small JSON-serialisable summary shown in the run receipt. The store reads it
            once every table is written, so a :class:`TableStream` may complete it as it goes.
        segments: per table, row counts of consecutive parts the store must not put in one
            shard (a corpus of daily files: one part per file, so a day's shards, and the map
            tasks keyed by them, stay the same as the corpus grows).
    """

    tables: "dict[str, pa.Table | TableStream]"
    removed: pa.Table = field(default_factory=lambda: LEDGER_SCHEMA.empty_table())
    metrics: dict[str, Any] = field(default_factory=dict)
    segments: dict[str, list[int]] = field(default_factory=dict)


def ledger(
    ids: Sequence[str],
    stage: str,
    action: str,
    reasons: Sequence[str] | str,
    evidence: Sequence[dict[str, Any]],
) -> pa.Table:
    """Build a removal ledger table; ``reasons`` may be one string for all rows."""
    n = len(ids)
    if isinstance(reasons, str):
        reasons = [reasons] * n
    if not (len(reasons) == len(evidence) == n):
        raise ValueError("ledger: ids, reasons and evidence must have the same length")
    return pa.table(
        {
            "id": pa.array(list(ids), pa.string()),
            "stage": pa.array([stage] * n, pa.string()),
            "action": pa.array([action] * n, pa.string()),
            "reason": pa.array(list(reasons), pa.string()),
            "evidence": pa.array([json.dumps(e, sort_keys=True, default=_json_default) for e in evidence], pa.string()),
        },
        schema=LEDGER_SCHEMA,
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def concat_ledgers(parts: Iterable[pa.Table]) -> pa.Table:
    """Concatenate ledger tables (an empty iterable gives an empty ledger)."""
    parts = [p for p in parts if p.num_rows]
    return pa.concat_tables(parts) if parts else LEDGER_SCHEMA.empty_table()


def drop_rows(table: pa.Table, drop_ids: Iterable[str]) -> pa.Table:
    """``table`` without the rows whose ``id`` is in ``drop_ids``, order preserved."""
    drop = pa.array(sorted(set(drop_ids)), pa.string())
    if len(drop) == 0:
        return table
    return table.filter(pc.invert(pc.is_in(table["id"], value_set=drop)))


def require_columns(table: pa.Table, columns: dict[str, pa.DataType], what: str) -> None:
    """Raise a :class:`WinnowError` naming the first missing or mistyped column."""
    for name, dtype in columns.items():
        if name not in table.column_names:
            raise WinnowError(f"{what}: missing column '{name}' (have: {', '.join(table.column_names)})")
        have = table.schema.field(name).type
        if have != dtype and not (pa.types.is_large_string(have) and dtype == pa.string()):
            raise WinnowError(f"{what}: column '{name}' has type {have}, expected {dtype}")


class Timings:
    """Wall seconds per named phase of a stage, and in total since creation.

    One helper instead of hand-written ``perf_counter`` pairs::

        timings = Timings()
        with timings.phase("exact"):
            ...
        metrics["timings_s"] = timings.rounded()
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block; a phase entered twice accumulates."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def total(self) -> float:
        """Seconds since this object was made."""
        return time.perf_counter() - self._start

    def rounded(self, digits: int = 4) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}


@dataclass(frozen=True)
class RowRules:
    """What :func:`check_rows` demands of a stage's rows (one validator for every stage).

    Attributes:
        unique_ids: no id may repeat (False for chunks of a larger table checked one at a time).
        texts: ``"present"`` (no null text) or ``"nonempty"`` (no null or empty text).
        utf8: validate every text's UTF-8 in full (Parquet readers do not).
        labels: a ``label`` column is required: strings (or integers, booleans), null = unlabelled,
            never an empty string.
        columns: further string columns that must exist with no nulls (``domain``).
    """

    unique_ids: bool = True
    texts: str = "present"
    utf8: bool = False
    labels: bool = False
    columns: tuple[str, ...] = ()


def check_unique_ids(ids: pa.ChunkedArray | pa.Array, where: str) -> None:
    """Raise a :class:`WinnowError` naming a duplicated id: :func:`check_rows`' id rule alone, for
    a reduce whose map tasks each checked only their own shard's rows."""
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids).flatten()
        dup = pc.filter(counts[0], pc.greater(counts[1], 1))
        raise WinnowError(f"{where}: duplicate id {dup[0].as_py()!r} ({len(dup)} id(s) occur more than once); "
                          "ids must be unique")


def check_rows(table: pa.Table, where: str, rules: RowRules = RowRules()) -> None:
    """Raise a :class:`WinnowError` naming the first row (its position and id) that breaks ``rules``.

    Checks, in order: a table with ``id`` and ``text`` string columns (and the ``rules`` columns),
    at least one row, no null id, unique ids, texts present (or non-empty), valid UTF-8, labels.
    """
    if not isinstance(table, pa.Table):
        raise WinnowError(f"{where}: expected a pyarrow Table, got {type(table).__name__}")
    require_columns(table, {c: pa.string() for c in ("id", "text", *rules.columns)}, where)
    if table.num_rows == 0:
        raise WinnowError(f"{where}: the table is empty (no rows)")
    ids = table["id"]
    if ids.null_count:
        raise WinnowError(f"{where}: column 'id' has {ids.null_count} null value(s), first at row "
                          f"{first_true(pc.is_null(ids))}")
    if rules.unique_ids:
        check_unique_ids(ids, where)
    for column in ("text", *rules.columns):
        if table[column].null_count:
            row = first_true(pc.is_null(table[column]))
            raise WinnowError(f"{where}: column '{column}' is null in row {row} (id {ids[row].as_py()!r}); "
                              "fill or drop those rows first")
    if rules.texts == "nonempty":
        empty = pc.equal(pc.binary_length(table["text"]), 0)
        if pc.any(empty).as_py():
            row = first_true(empty)
            raise WinnowError(f"{where}: column 'text' is empty in row {row} (id {ids[row].as_py()!r})")
    if rules.utf8:
        _check_utf8(table["text"], ids, where)
    if rules.labels:
        _check_labels(table, where)


def first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    """Position of the first true value of a boolean array (one is known to exist)."""
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _check_utf8(texts: pa.ChunkedArray, ids: pa.ChunkedArray, where: str) -> None:
    start = 0
    for chunk in texts.chunks:
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            row = start + _first_invalid_utf8(chunk)
            raise WinnowError(f"{where}: text of id {ids[row].as_py()!r} (row {row}) is not valid UTF-8; decode "
                              "the source with the right encoding (or errors='replace') first") from None
        start += len(chunk)


def _first_invalid_utf8(chunk: pa.Array) -> int:
    raw = chunk.cast(pa.large_binary()) if pa.types.is_large_string(chunk.type) else chunk.view(pa.binary())
    for i, v in enumerate(raw.to_pylist()):
        if v is None:
            continue
        try:
            v.decode("utf-8")
        except UnicodeDecodeError:
            return i
    return 0


def _check_labels(table: pa.Table, where: str) -> None:
    if "label" not in table.column_names:
        raise WinnowError(f"{where}: missing column 'label' (have: {', '.join(table.column_names)})")
    ltype = table.schema.field("label").type
    if not (pa.types.is_string(ltype) or pa.types.is_large_string(ltype) or pa.types.is_integer(ltype)
            or pa.types.is_boolean(ltype) or pa.types.is_null(ltype)
            or (pa.types.is_dictionary(ltype) and pa.types.is_string(ltype.value_type))):
        raise WinnowError(f"{where}: column 'label' has type {ltype}; expected strings (or integers)")
    if pa.types.is_string(ltype) or pa.types.is_large_string(ltype):
        blank = pc.equal(pc.utf8_trim_whitespace(table["label"]), "")
        if pc.any(blank).as_py():
            row = first_true(pc.fill_null(blank, False))
            raise WinnowError(f"{where}: row id {table['id'][row].as_py()!r} has an empty label in column 'label'; "
                              "use null for unlabelled rows")


_PUNCT_RE = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE_RE = re.compile(r"\s+", re.UNICODE)


@dataclass(frozen=True)
class Normalization:
    """How text is folded before it is compared (dedup and contamination share this)."""

    nfkc: bool = True
    lowercase: bool = True
    strip_punctuation: bool = True
    collapse_whitespace: bool = True


def normalize_text(text: str, how: Normalization = Normalization()) -> str:
    """Fold ``text`` so that reformatted copies compare equal."""
    if how.nfkc:
        text = unicodedata.normalize("NFKC", text)
    if how.lowercase:
        text = text.lower()
    if how.strip_punctuation:
        text = _PUNCT_RE.sub(" ", text)
    if how.collapse_whitespace:
        text = _SPACE_RE.sub(" ", text).strip()
    return text


def params_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a params dataclass from a config dict, rejecting unknown keys by name."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise WinnowError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**values)


# -- progress --------------------------------------------------------------------------------------
# Stages stay free of Prefect, yet long ones should show progress both in the terminal and in the
# Prefect UI. A stage reports through `track`; whoever runs it (the Prefect task wrapper) may install
# a listener that mirrors the fraction done into a Prefect progress artifact.

import contextvars  # noqa: E402  (kept beside the only code that uses it)
from typing import Callable, TypeVar  # noqa: E402

_T = TypeVar("_T")
_progress_listener: contextvars.ContextVar[Callable[[str, float], None] | None] = contextvars.ContextVar(
    "winnow_progress_listener", default=None
)


def set_progress_listener(listener: Callable[[str, float], None] | None) -> contextvars.Token:
    """Install ``listener(description, fraction_done)`` for stages run in this context."""
    return _progress_listener.set(listener)


def track(items: Iterable[_T], total: int | None = None, desc: str = "") -> Iterator[_T]:
    """Iterate with a terminal progress bar, and tell the installed listener (≤ 100 updates)."""
    from tqdm.auto import tqdm

    listener = _progress_listener.get()
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    step = max(1, (total or 0) // 100)
    # disable=None: no bar when stderr is not a terminal, so logs and CI output get no \r-redrawn lines.
    with tqdm(items, total=total, desc=desc, leave=False, mininterval=1.0, disable=None) as bar:
        for i, item in enumerate(bar, start=1):
            yield item
            if listener is not None and total and (i % step == 0 or i == total):
                listener(desc, i / total)
