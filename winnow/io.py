"""Reading users' files into canonical Arrow tables, and writing results back out.

Inputs may be Parquet (a file or a folder of files), JSON Lines (optionally gzipped) or a
``datasets`` dataset saved with ``save_to_disk``. Users' column names are mapped onto winnow's
canonical names (``id``, ``text``, ``domain``, ``label``) on the way in and back on the way out, and
every check failure names the file, the column and, where there is one, the row.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

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


def check_exists(path: Path) -> None:
    """Raise one clear line if ``path`` cannot be read as an input (missing, a loop, no access)."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a symlink loop this way
        raise WinnowError(f"{path}: symbolic link loop") from None
    except FileNotFoundError:
        if path.is_symlink():
            raise WinnowError(f"{path}: broken symbolic link (to {os.readlink(path)})") from None
        raise WinnowError(f"{path}: no such file or folder") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise WinnowError(f"{path}: symbolic link loop") from None
        raise WinnowError(f"{path}: {e.strerror}") from None
    if not os.access(path, os.R_OK):
        raise WinnowError(f"{path}: permission denied (cannot read it)")


def input_files(path: Path) -> list[Path]:
    """The files that make up an input (used for its content fingerprint)."""
    check_exists(path)
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise WinnowError(f"{path}: folder is empty")
    return files


def read_table(path: str | Path, split: str | None = None) -> pa.Table:
    """Read Parquet, JSON Lines or a saved ``datasets`` dataset into an Arrow table."""
    path = Path(path)
    check_exists(path)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return _read_hf_dataset(path, split)
    name = path.name.lower()
    if path.is_dir() or name.endswith((".parquet", ".pq")):
        try:
            if path.is_file():
                from storage.store import read_parquet

                return read_parquet(path)
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise WinnowError(f"{path}: not a readable Parquet file or folder ({_first_line(e)})") from None
    if name.endswith(JSONL_SUFFIXES):
        return _read_jsonl(path)
    raise WinnowError(f"{path}: unknown format; expected .parquet, .jsonl[.gz] or a `datasets` save_to_disk folder")


def _read_hf_dataset(path: Path, split: str | None) -> pa.Table:
    from winnow import pandas_guard

    with pandas_guard.allowed():  # datasets needs pandas
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
    seen: dict[str, tuple[str | None, int]] = {}
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
        for key, value in obj.items():
            kind = _json_kind(value)
            first = seen.setdefault(key, (kind, lineno))
            if kind is not None and first[0] is None:
                seen[key] = (kind, lineno)
            elif kind is not None and kind != first[0]:
                raise WinnowError(f"{path}:{lineno}: field '{key}' is {kind} here but {first[0]} on line {first[1]}; "
                                  "give every row the same type")
    raise WinnowError(f"{path}: lines hold JSON objects whose fields have inconsistent types")


def _json_kind(value: Any) -> str | None:
    """The JSON kind Arrow infers one column type from (None: null, which fits any)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _column_as_string(table: pa.Table, column: str, where: str, allow_null: bool, id_column: str = "id",
                      numbers_ok: bool = True, row_offset: int = 0) -> pa.ChunkedArray:
    """A column as UTF-8 strings; integers become their decimal form only where ``numbers_ok``.
    ``row_offset``: where ``table`` starts in the user's input (messages name the input's row)."""
    arr = table[column]
    if pa.types.is_integer(arr.type) and not numbers_ok:
        raise WinnowError(f"{where}: column '{column}' must hold text, but has type {arr.type} "
                          "(numbers are not cast to text; convert the column or choose another)")
    if pa.types.is_integer(arr.type):
        arr = pc.cast(arr, pa.string())
    elif pa.types.is_large_string(arr.type):
        arr = pc.cast(arr, pa.string())
    elif pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        arr = _binary_to_utf8(arr, table, column, where, id_column, row_offset=row_offset)
    elif not pa.types.is_string(arr.type) and not (allow_null and pa.types.is_null(arr.type)):
        raise WinnowError(f"{where}: column '{column}' must hold text, but has type {arr.type}")
    if pa.types.is_null(arr.type):
        arr = pc.cast(arr, pa.string())
    if not allow_null and arr.null_count:
        row = pc.index(pc.is_null(arr), True).as_py()
        raise WinnowError(f"{where}: column '{column}' is null at row {row + row_offset}"
                          f"{_row_id_hint(table, row, column, id_column)}")
    return arr


def _binary_to_utf8(
    arr: pa.ChunkedArray, table: pa.Table, column: str, where: str, id_column: str, start: int = 0,
    row_offset: int = 0,
) -> pa.ChunkedArray:
    """``arr`` (rows ``start``... of ``table``) cast to UTF-8, or an error naming the first bad row."""
    try:
        return pc.cast(arr, pa.string())
    except pa.ArrowInvalid:
        for row, value in enumerate(arr.to_pylist(), start=start):
            if value is not None:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise WinnowError(
                        f"{where}: column '{column}' has invalid UTF-8 at row {row + row_offset}"
                        f"{_row_id_hint(table, row, column, id_column)} (byte {e.start})"
                    ) from None
        raise


def _row_id_hint(table: pa.Table, row: int, column: str, id_column: str) -> str:
    if column != id_column and id_column in table.column_names:
        value = table[id_column][row].as_py()
        return f" (id {value!r})" if value is not None else ""
    return ""


def _check_utf8(arr: pa.ChunkedArray, table: pa.Table, column: str, where: str, id_column: str,
                row_offset: int = 0) -> None:
    """Parquet readers do not validate UTF-8; a full validation finds the bad row."""
    for chunk_start, chunk in _chunks_with_offsets(arr):
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            _binary_to_utf8(pa.chunked_array([chunk.view(pa.binary())]), table, column, where, id_column,
                            chunk_start, row_offset)


def _chunks_with_offsets(arr: pa.ChunkedArray):
    start = 0
    for chunk in arr.chunks:
        yield start, chunk
        start += len(chunk)


def canonical_corpus(
    table: pa.Table, cols: Columns, where: str, require_label: bool = False, unique_ids: bool = True,
    row_offset: int = 0,
) -> pa.Table:
    """Validate a user table and rename its columns to winnow's canonical names.

    Rules: the id and text columns must exist; ids are strings (integers are converted) and
    unique; texts are non-null valid UTF-8 strings; the table is not empty. The domain column is
    optional (filled with ``cols.default_domain``), the label column optional unless
    ``require_label``. Other columns pass through unchanged. ``unique_ids=False`` is for training
    rows, where a document legitimately repeats (epochs, chunks of one long document).
    ``row_offset`` is where ``table`` starts in the user's input when it is one piece of it
    (:func:`stream_corpus`), so that a message names the input's row.
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
        raise WinnowError(f"{where}: missing label column '{cols.label}' (columns: {', '.join(table.column_names)}; "
                          "choose another with --label-column)")
    for role, name in (("id", cols.id), ("text", cols.text), ("domain", cols.domain), ("label", cols.label)):
        # A column that carries a role's name but is not mapped to that role would pass through
        # under the canonical name and be read as that role downstream (e.g. `label` used as the
        # labels although --label-column named another, absent, column).
        if role != name and role in table.column_names:
            flag = f"--{role}-column"
            raise WinnowError(
                f"{where}: column '{role}' is not the {role} column ({flag} is '{name}'"
                f"{'' if name in table.column_names else ', which is absent'}); pass {flag} {role} or rename it"
            )
    out: dict[str, pa.ChunkedArray] = {}
    ids = _column_as_string(table, cols.id, where, allow_null=False, row_offset=row_offset)
    out["id"] = ids
    text = _column_as_string(table, cols.text, where, allow_null=False, id_column=cols.id, numbers_ok=False,
                             row_offset=row_offset)
    _check_utf8(text, table, cols.text, where, cols.id, row_offset)
    out["text"] = text
    if cols.domain in table.column_names:
        out["domain"] = _column_as_string(table, cols.domain, where, allow_null=False, id_column=cols.id,
                                          row_offset=row_offset)
    else:
        out["domain"] = pa.chunked_array([pa.array([cols.default_domain] * table.num_rows, pa.string())])
    if cols.label in table.column_names:
        label = table[cols.label]
        if pa.types.is_integer(label.type) or pa.types.is_boolean(label.type):
            label = pc.cast(label, pa.string())
        out["label"] = _column_as_string(table.set_column(table.column_names.index(cols.label), cols.label, label),
                                         cols.label, where, allow_null=True, id_column=cols.id, row_offset=row_offset)
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


PIECE_ROWS = 65_536  # rows a streamed ingest validates and hands on at a time (~45 MB of typical text)


def streamable_parquet(path: Path) -> list[Path] | None:
    """The files of a Parquet input that :func:`stream_corpus` can read piece by piece, or None where
    it must be read whole (:func:`read_table`): a single file, or a folder of Parquet files that
    share one schema without dictionary columns (whose dictionaries may differ from piece to piece).
    Anything unreadable is None too, so that :func:`read_table` reports it in its own words."""
    if path.is_file():
        files = [path] if path.name.lower().endswith((".parquet", ".pq")) else []
    elif (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        return None
    else:
        files = input_files(path)
        # pq.read_table on a folder skips "_"-prefixed files (_SUCCESS, _metadata): keep to its reading.
        if any(f.name.startswith("_") or not f.name.lower().endswith((".parquet", ".pq")) for f in files):
            return None
    try:
        schemas = [pq.read_schema(f) for f in files]
    except (pa.ArrowException, OSError):
        return None
    if not schemas or any(not s.equals(schemas[0]) for s in schemas):
        return None
    if any(pa.types.is_dictionary(f.type) for f in schemas[0]):
        return None
    return files


def stream_corpus(files: list[Path], cols: Columns, where: str, unique_ids: bool = True,
                  piece_rows: int | None = None) -> tuple[pa.Schema, int, Callable[[], Iterator[pa.Table]]]:
    """A Parquet corpus as canonical pieces, never whole in memory: ``(schema, rows, pieces)``.

    The result equals :func:`canonical_corpus` of the whole input, row for row, and fails the same
    checks with the same messages (rows are counted from the input's start). Checks of the columns
    run here, on the first rows; the rest run as ``pieces()`` is consumed, so a caller writing the
    pieces must discard what it wrote when one raises (the store's ``put`` does). Unique ids are
    checked once the last piece is read, over the ids alone (~20 bytes a row). ``piece_rows``:
    rows per piece (default :data:`PIECE_ROWS`).
    """
    piece_rows = piece_rows or PIECE_ROWS
    rows = 0
    for f in files:
        with pq.ParquetFile(f) as pf:
            rows += pf.metadata.num_rows
    if rows == 0:
        raise WinnowError(f"{where}: the dataset is empty (0 rows)")
    first = next(b for b in _parquet_batches(files, min(piece_rows, 1_024)) if b.num_rows)
    schema = canonical_corpus(pa.Table.from_batches([first]), cols, where, unique_ids=False).schema

    def pieces() -> Iterator[pa.Table]:
        ids: list[pa.Array] = []
        start = 0
        for batch in _parquet_batches(files, piece_rows):
            if not batch.num_rows:
                continue
            piece = canonical_corpus(pa.Table.from_batches([batch]), cols, where, unique_ids=False, row_offset=start)
            start += piece.num_rows
            if unique_ids:
                ids.extend(piece["id"].chunks)
            yield piece
        if unique_ids:
            check_unique_ids(pa.chunked_array(ids, pa.string()), where, cols.id)

    return schema, rows, pieces


def _parquet_batches(files: list[Path], rows: int) -> Iterator[pa.RecordBatch]:
    for f in files:
        try:
            # Pre-buffering reads row groups ahead (a 3 GB corpus peaked at 860 MB, 420 without);
            # a buffered stream also bounds a file written as one huge row group.
            with pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20) as pf:
                yield from pf.iter_batches(batch_size=rows)
        except (pa.ArrowException, OSError) as e:
            raise WinnowError(f"{f}: not a readable Parquet file ({_first_line(e)})") from None


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


OUTPUT_SUFFIXES = (".parquet", ".pq", ".jsonl")


def output_format(out: Path) -> str:
    """``"parquet"`` or ``"jsonl"`` from an output file's suffix; anything else is refused."""
    name = out.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".jsonl"):
        return "jsonl"
    raise WinnowError(f"{out}: unknown output format '{out.suffix or out.name}'; "
                      f"name the file with one of {', '.join(OUTPUT_SUFFIXES)}")


def check_output(out: Path, inputs: list[Path], folder: bool = False) -> None:
    """Refuse, before anything is written, an output that would destroy an input or cannot be made.

    Checked: the format (by suffix, unless ``folder``), that OUT is not an input, inside an input
    folder or a folder holding an input, that a file OUT is not an existing folder (and a folder OUT
    is not an existing file), and that the nearest existing parent is a writable folder.
    """
    if not folder:
        output_format(out)
    target = out.expanduser().resolve()
    for given in inputs:
        src = Path(given).expanduser().resolve()
        if target == src or src in target.parents or target in src.parents:
            raise WinnowError(f"{out}: the output would overwrite the input {given}; choose another --out")
    if out.exists() and out.is_dir() != folder:
        kind = "a folder" if out.is_dir() else "a file"
        raise WinnowError(f"{out}: is {kind}; give {'a folder' if folder else 'a file name'} for --out")
    writable_parent(out)


def writable_parent(path: Path) -> Path:
    """The nearest existing ancestor of ``path``, which must be a folder this process can write."""
    parent = path.expanduser().absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise WinnowError(f"{path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WinnowError(f"{path}: permission denied (cannot write in {parent})")
    # os.access trusts mode bits, which root, read-only mounts and pseudo-filesystems (/proc)
    # defeat: a real probe file (removed at once) is the only sure check before the work is done.
    probe = parent / f".winnow-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise WinnowError(f"{path}: cannot write in {parent} ({e.strerror})") from None
    return parent


def export_table(table: pa.Table, out: str | Path, cols: Columns | None = None) -> Path:
    """Write a result as Parquet or JSONL (by ``out``'s suffix), user column names restored.

    The file appears whole or not at all: it is written beside ``out`` under a temporary name and
    renamed over it, and a failed write (a full disk) removes the temporary file.
    """
    out = Path(out)
    fmt = output_format(out)
    if cols is not None:
        back = {canon: user for canon, user in cols.renames().items() if canon in table.column_names}
        table = table.rename_columns([back.get(c, c) for c in table.column_names])
    with _atomic_output(out) as tmp:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for row in table.to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            _write_parquet(table, tmp)
    return out


#: Rows per row group of an exported Parquet file (the store's shards use the same).
EXPORT_ROW_GROUP = 1 << 16


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Parquet whose bytes depend on the rows alone, not on how the table is chunked in memory:
    the same result fresh from a stage or read back from the store's shards wrote files of other
    bytes (the writer's pages follow the chunks). Each row group is written from one contiguous
    chunk, so memory grows by one row group, not by a copy of the table."""
    with pq.ParquetWriter(path, table.schema, compression="zstd") as writer:
        for start in range(0, table.num_rows, EXPORT_ROW_GROUP) if table.num_rows else (0,):
            writer.write_table(table.slice(start, EXPORT_ROW_GROUP).combine_chunks(), row_group_size=EXPORT_ROW_GROUP)


def export_parquet_file(src: Path, out: str | Path) -> Path:
    """Copy a Parquet file that already holds the result as the user should get it (a store shard
    whose columns need no renaming) to ``out``: the bytes, not a decode and re-encode of the table.
    Whole or not at all, like :func:`export_table`."""
    out = Path(out)
    if output_format(out) != "parquet":
        raise ValueError(f"{out}: export_parquet_file writes Parquet only")
    with _atomic_output(out) as tmp:
        shutil.copyfile(src, tmp)
    return out


@contextlib.contextmanager
def _atomic_output(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out``, renamed over it when the block succeeds, removed if not."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
