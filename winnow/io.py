"""Reading users' files into canonical Arrow tables, and writing results back out.

Inputs may be Parquet (a file or a folder of files), JSON Lines (optionally gzipped) or a
``datasets`` dataset saved with ``save_to_disk``. Users' column names are mapped onto winnow's
canonical names (``id``, ``text``, ``domain``, ``label``) on the way in and back on the way out, and
every check failure names the file, the column and, where there is one, the row.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from winnow.errors import WinnowError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz")


@dataclass(frozen=True)
class Columns:
    """Which of the user's columns play which canonical role.

    ``domain`` and ``label`` are optional: a missing domain column gives every row the domain
    ``default_domain``; a missing label column means the data is unlabelled.
    """

    id: str = "id"
    text: str = "text"
    domain: str = "domain"
    label: str = "label"
    default_domain: str = "default"

    def renames(self) -> dict[str, str]:
        """Mapping canonical name -> user name for the roles that differ."""
        return {k: v for k, v in (("id", self.id), ("text", self.text), ("domain", self.domain), ("label", self.label)) if k != v}


def input_files(path: Path) -> list[Path]:
    """The files that make up an input (used for its content fingerprint)."""
    if not path.exists():
        raise WinnowError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise WinnowError(f"{path}: folder is empty")
    return files


def read_table(path: str | Path, split: str | None = None) -> pa.Table:
    """Read Parquet, JSON Lines or a saved ``datasets`` dataset into an Arrow table."""
    path = Path(path)
    if not path.exists():
        raise WinnowError(f"{path}: no such file or folder")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return _read_hf_dataset(path, split)
    name = path.name.lower()
    if path.is_dir() or name.endswith((".parquet", ".pq")):
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise WinnowError(f"{path}: not a readable Parquet file or folder ({_first_line(e)})") from None
    if name.endswith(JSONL_SUFFIXES):
        return _read_jsonl(path)
    raise WinnowError(f"{path}: unknown format; expected .parquet, .jsonl[.gz] or a `datasets` save_to_disk folder")


def _read_hf_dataset(path: Path, split: str | None) -> pa.Table:
    import datasets  # imported lazily: it is slow to import and only needed for this format

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several unrelated types for a broken folder
        raise WinnowError(f"{path}: not a readable `datasets` folder ({_first_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            raise WinnowError(f"{path}: a DatasetDict with splits {sorted(ds)}; choose one with --split")
        if split not in ds:
            raise WinnowError(f"{path}: no split '{split}' (have {sorted(ds)})")
        ds = ds[split]
    table = ds.data.table
    if ds._indices is not None:  # a filtered/shuffled view: materialise the rows it selects
        table = table.take(ds._indices.column(0))
    return table


def _read_jsonl(path: Path) -> pa.Table:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise WinnowError(f"{path}: cannot read ({_first_line(e)})") from None
    try:
        raw.decode("utf-8")  # Arrow's JSON reader does not validate UTF-8
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1)
        raise WinnowError(f"{path}:{lineno}: invalid UTF-8 at byte {col} of the line") from None
    try:
        return pajson.read_json(io.BytesIO(raw), read_options=pajson.ReadOptions(block_size=1 << 24))
    except pa.ArrowException:
        pass
    # Arrow's message does not say which line is bad; find it ourselves for the user.
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise WinnowError(f"{path}:{lineno}: invalid UTF-8 at byte {e.start}") from None
        except json.JSONDecodeError as e:
            raise WinnowError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise WinnowError(f"{path}:{lineno}: each line must be a JSON object, got {type(obj).__name__}")
    raise WinnowError(f"{path}: lines hold JSON objects whose fields have inconsistent types")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _column_as_string(table: pa.Table, column: str, where: str, allow_null: bool, id_column: str = "id") -> pa.ChunkedArray:
    arr = table[column]
    if pa.types.is_integer(arr.type):
        arr = pc.cast(arr, pa.string())
    elif pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    elif pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        arr = _binary_to_utf8(arr, table, column, where, id_column)
    elif not pa.types.is_string(arr.type) and not (allow_null and pa.types.is_null(arr.type)):
        raise WinnowError(f"{where}: column '{column}' must hold text, but has type {arr.type}")
    if pa.types.is_null(arr.type):
        arr = pc.cast(arr, pa.string())
    if not allow_null and arr.null_count:
        row = pc.index(pc.is_null(arr), True).as_py()
        raise WinnowError(f"{where}: column '{column}' is null at row {row}{_row_id_hint(table, row, column, id_column)}")
    return arr


def _binary_to_utf8(
    arr: pa.ChunkedArray, table: pa.Table, column: str, where: str, id_column: str, row_offset: int = 0
) -> pa.ChunkedArray:
    try:
        return pc.cast(arr, pa.string())
    except pa.ArrowInvalid:
        for row, value in enumerate(arr.to_pylist(), start=row_offset):
            if value is not None:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise WinnowError(
                        f"{where}: column '{column}' has invalid UTF-8 at row {row}{_row_id_hint(table, row, column, id_column)}"
                        f" (byte {e.start})"
                    ) from None
        raise


def _row_id_hint(table: pa.Table, row: int, column: str, id_column: str) -> str:
    if column != id_column and id_column in table.column_names:
        value = table[id_column][row].as_py()
        return f" (id {value!r})" if value is not None else ""
    return ""


def _check_utf8(arr: pa.ChunkedArray, table: pa.Table, column: str, where: str, id_column: str) -> None:
    """Parquet readers do not validate UTF-8; a full validation finds the bad row."""
    for chunk_start, chunk in _chunks_with_offsets(arr):
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            _binary_to_utf8(pa.chunked_array([chunk.view(pa.binary())]), table, column, where, id_column, chunk_start)


def _chunks_with_offsets(arr: pa.ChunkedArray):
    start = 0
    for chunk in arr.chunks:
        yield start, chunk
        start += len(chunk)


def canonical_corpus(
    table: pa.Table, cols: Columns, where: str, require_label: bool = False, unique_ids: bool = True
) -> pa.Table:
    """Validate a user table and rename its columns to winnow's canonical names.

    Rules: the id and text columns must exist; ids are strings (integers are converted) and
    unique; texts are non-null valid UTF-8 strings; the table is not empty. The domain column is
    optional (filled with ``cols.default_domain``), the label column optional unless
    ``require_label``. Other columns pass through unchanged. ``unique_ids=False`` is for training
    rows, where a document legitimately repeats (epochs, chunks of one long document).
    """
    if table.num_rows == 0:
        raise WinnowError(f"{where}: the dataset is empty (0 rows)")
    for role, name in (("id", cols.id), ("text", cols.text)):
        if name not in table.column_names:
            raise WinnowError(
                f"{where}: missing {role} column '{name}' (columns: {', '.join(table.column_names)}; "
                f"choose another with --{role}-column)"
            )
    if require_label and cols.label not in table.column_names:
        raise WinnowError(f"{where}: missing label column '{cols.label}' (columns: {', '.join(table.column_names)})")
    out: dict[str, pa.ChunkedArray] = {}
    ids = _column_as_string(table, cols.id, where, allow_null=False)
    out["id"] = ids
    text = _column_as_string(table, cols.text, where, allow_null=False, id_column=cols.id)
    _check_utf8(text, table, cols.text, where, cols.id)
    out["text"] = text
    if cols.domain in table.column_names:
        out["domain"] = _column_as_string(table, cols.domain, where, allow_null=False, id_column=cols.id)
    else:
        out["domain"] = pa.chunked_array([pa.array([cols.default_domain] * table.num_rows, pa.string())])
    if cols.label in table.column_names:
        label = table[cols.label]
        if pa.types.is_integer(label.type) or pa.types.is_boolean(label.type):
            label = pc.cast(label, pa.string())
        out["label"] = _column_as_string(table.set_column(table.column_names.index(cols.label), cols.label, label), cols.label, where, allow_null=True, id_column=cols.id)
        if require_label and out["label"].null_count == table.num_rows:
            raise WinnowError(f"{where}: label column '{cols.label}' is entirely null")
    if unique_ids:
        check_unique_ids(out["id"], where, cols.id)
    taken = {cols.id, cols.text, cols.domain, cols.label}
    for name in table.column_names:
        if name in taken:
            continue
        if name in out:
            raise WinnowError(
                f"{where}: column '{name}' clashes with the column mapped to the {name} role; rename one of them"
            )
        out[name] = table[name]
    return pa.table(out)


def check_unique_ids(ids: pa.ChunkedArray, where: str, column: str) -> None:
    """Raise a :class:`WinnowError` naming a duplicated id and the rows that share it."""
    counts = pc.value_counts(ids)
    dup_mask = pc.greater(counts.field("counts"), 1)
    if pc.any(dup_mask).as_py():
        dups = counts.filter(dup_mask)
        first = dups.field("values")[0].as_py()
        rows = pc.indices_nonzero(pc.equal(ids, first)).to_pylist()[:5]
        raise WinnowError(
            f"{where}: column '{column}' has {len(dups)} duplicated id(s); e.g. {first!r} at rows {rows}"
        )


def canonical_benchmarks(table: pa.Table, where: str, default_name: str, fmt: str = "auto",
                         fields: dict[str, str] | None = None) -> pa.Table:
    """Validate benchmark rows in any known native format into :data:`tasks.common.BENCHMARK_SCHEMA`
    (plus ``format`` and ``extra``, the fields no role reads, as JSON).

    ``fmt`` names the format (``auto``: detected from the field names) and ``fields`` maps roles to
    the user's columns; the formats and what each one's searchable text is are documented in
    :mod:`winnow.benchmark_formats`. Ids must be unique.
    """
    from winnow.benchmark_formats import to_canonical

    result = to_canonical(table, where, default_name, fmt, fields)
    check_unique_ids(result["id"], where, "id")
    return result


def export_table(table: pa.Table, out: str | Path, cols: Columns | None = None) -> Path:
    """Write a result as Parquet (or JSONL if ``out`` ends in .jsonl), user column names restored."""
    out = Path(out)
    if cols is not None:
        back = {canon: user for canon, user in cols.renames().items() if canon in table.column_names}
        table = table.rename_columns([back.get(c, c) for c in table.column_names])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if out.name.lower().endswith(".jsonl"):
        with open(tmp, "w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out)
    return out
