"""Benchmark files in their native shapes, turned into :data:`tasks.common.BENCHMARK_SCHEMA` rows.

People hold benchmarks the way their source ships them (a ``datasets`` folder, Parquet or JSON
Lines from a hub, an lm-eval prompt file). Each known shape has a converter that says which of its
fields is the question, the choices, the answer and the reference text; every other field is kept
(as JSON in the ``extra`` column, which the contamination report carries), never an error.

Formats (``--benchmark-format`` / ``inputs.benchmark_format``; ``auto`` detects them from the
field names, in this order). The *searchable text* is what the contamination stage checks by
default (question, then the correct answer's text):

* ``truthfulqa_mc``: ``question``, ``mc1_targets {choices, labels}`` (``mc2_targets`` is kept).
  Searchable: question + the mc1 choice labelled 1.
* ``hellaswag``: ``ctx`` (or ``ctx_a`` + ``ctx_b``), ``endings``, ``label``. Searchable: context +
  the correct ending.
* ``arc``: ``question``, ``choices {text, label}``, ``answerKey`` (a label: ``A``.. or ``1``..).
  Searchable: question + the choice whose label is the key.
* ``mmlu``: ``question``, ``choices`` (list of strings), ``answer`` (index or letter); also winnow's
  own schema (``target``, ``id``, ``benchmark``, ``context``) and question + ``target`` items with no
  choices (HumanEval). Searchable: question + ``choices[answer]`` (``target`` when given).
* ``mmlu_prompt``: ``question`` with the choices written in (``A. ...`` lines, ``(A)``, ``A)``,
  ``A:``), ``answer`` a letter or index. Searchable: the question without its choice lines and the
  ``Answer:`` cue + the correct choice.
* ``gsm8k``: ``question``, ``answer`` free text (a worked solution). Searchable: question + the
  whole answer (``target``; ``answer`` becomes -1).
* ``lm_eval``: a prompt (``prompt``, ``query`` or ``input``; a chat list of ``{role, content}`` is
  joined, system messages left out) and an answer (``answer``, ``ideal``, ``gold``, ``label``, ``target`` or ``output``): a
  letter or index into the choices written in the prompt, or free text. Searchable: the prompt
  without its choice lines + the correct choice (or + the answer text).

Anything else: a field mapping (``--benchmark-field ROLE=COLUMN`` / ``inputs.benchmark_fields``)
renames the user's columns onto the roles ``id``, ``benchmark``, ``question``, ``choices``,
``answer``, ``target``, ``context`` before detection, so e.g. ``question=problem target=solution``
reads as the ``gsm8k``/``mmlu`` shapes above.

Bad input (one line, :class:`~winnow.errors.WinnowError`): an undetectable shape names the fields
found and the formats known; items with no searchable text are named; an answer that is not a valid
index, letter or label names the row.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import pyarrow as pa

from tasks.common import BENCHMARK_SCHEMA
from winnow.errors import WinnowError

ROLES = ("id", "benchmark", "question", "choices", "answer", "target", "context")
#: the canonical benchmark table: BENCHMARK_SCHEMA plus the detected format and the kept fields
CANONICAL_SCHEMA = pa.schema(list(BENCHMARK_SCHEMA) + [("format", pa.string()), ("extra", pa.string())])
_PROMPT_FIELDS = ("prompt", "query", "input")
_ANSWER_FIELDS = ("answer", "ideal", "gold", "label", "target", "output")
# an option line written into a prompt: "A. text", "(B) text", "C) text", "D: text"
_OPTION_RE = re.compile(r"^\s*\(?([A-Z])[.):]\s*(\S.*)$")


class _Item(dict):
    """question, choices, answer, target of one row (the keys of BENCHMARK_SCHEMA that vary)."""


def _letter_or_index(value: Any, n_choices: int, labels: list[str] | None = None) -> int | None:
    """The choice index ``value`` names (an int, a digit string, a letter, or one of ``labels``)."""
    if isinstance(value, bool):
        return None
    if labels is not None and value is not None and str(value).strip() in labels:
        return labels.index(str(value).strip())
    if isinstance(value, int):
        i = value
    elif isinstance(value, str) and value.strip().isdigit():
        i = int(value.strip())
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():
        i = ord(value.strip().upper()) - ord("A")
    else:
        return None
    return i if 0 <= i < n_choices else None


def split_prompt_choices(prompt: str) -> tuple[str, list[str]]:
    """(stem, choices) of a prompt with its choices written in as ``A. ...`` lines (letters in
    order from A); the stem drops a trailing ``Answer:`` line. No such lines: (prompt, [])."""
    lines = prompt.split("\n")
    choices: list[str] = []
    first = None
    for i, line in enumerate(lines):
        m = _OPTION_RE.match(line)
        if m and ord(m[1]) - ord("A") == len(choices):
            first = i if first is None else first
            choices.append(m[2].strip())
        elif choices and line.strip():
            if not re.match(r"^\s*answer\s*:?\s*$", line, re.I):
                choices[-1] += " " + line.strip()  # an option that wraps onto a second line
    if len(choices) < 2:
        return prompt, []
    stem = "\n".join(ln for ln in lines[:first])
    return stem.strip(), choices


def _chat_text(value: Any) -> Any:
    """A chat prompt (list of ``{role, content}``) as one text; anything else unchanged. System
    messages are instructions shared by every item, not the item, and are left out."""
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        turns = [m for m in value if m.get("role") != "system"] or value
        return "\n".join(str(m["content"] or "") for m in turns)
    return value


def _mmlu(row: dict, i: int, where: str) -> _Item:
    choices = row.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise WinnowError(f"{where}: row {i}: 'choices' must be a list of strings, got {row.get('choices')!r}")
    target = row.get("target")
    raw = row.get("answer")
    if not choices:
        if raw not in (None, -1):
            raise WinnowError(f"{where}: row {i}: 'answer' {raw!r} is given but the row has no 'choices'")
        return _Item(question=row.get("question"), choices=[], answer=-1, target=target or "")
    answer = _letter_or_index(raw, len(choices))
    if answer is None:
        raise WinnowError(f"{where}: row {i}: 'answer' {raw!r} is not a valid choice index or letter "
                          f"for {len(choices)} choices")
    return _Item(question=row.get("question"), choices=choices, answer=answer,
                 target=target if target is not None else choices[answer])


def _prompt_choice_item(prompt: Any, raw: Any, i: int, where: str, field: str) -> _Item:
    """A prompt with choices written in and a letter/index answer, or a free-text answer."""
    prompt = _chat_text(prompt)
    if not isinstance(prompt, str):
        raise WinnowError(f"{where}: row {i}: '{field}' must be text, got {type(prompt).__name__}")
    stem, choices = split_prompt_choices(prompt)
    answer = _letter_or_index(raw, len(choices)) if choices else None
    if answer is not None:
        return _Item(question=stem, choices=choices, answer=answer, target=choices[answer])
    if choices and isinstance(raw, str) and raw.strip() in choices:
        a = choices.index(raw.strip())
        return _Item(question=stem, choices=choices, answer=a, target=choices[a])
    if raw is None or isinstance(raw, (int, bool)) or (isinstance(raw, str) and len(raw.strip()) <= 1):
        raise WinnowError(f"{where}: row {i}: answer {raw!r} names none of the {len(choices)} choices "
                          f"written in its '{field}' (a free-text answer: --benchmark-format gsm8k)")
    return _Item(question=prompt, choices=[], answer=-1, target=str(raw))


def _mmlu_prompt(row: dict, i: int, where: str) -> _Item:
    return _prompt_choice_item(row.get("question"), row.get("answer"), i, where, "question")


def _gsm8k(row: dict, i: int, where: str) -> _Item:
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise WinnowError(f"{where}: row {i}: 'answer' must be text in the gsm8k format, got {answer!r}")
    return _Item(question=row.get("question"), choices=[], answer=-1, target=answer or "")


def _arc(row: dict, i: int, where: str) -> _Item:
    ch = row.get("choices") or {}
    texts, labels = list(ch.get("text") or []), [str(x) for x in ch.get("label") or []]
    if len(texts) != len(labels) or not texts:
        raise WinnowError(f"{where}: row {i}: 'choices' must hold equally long 'text' and 'label' lists")
    answer = _letter_or_index(row.get("answerKey"), len(texts), labels)
    if answer is None:
        raise WinnowError(f"{where}: row {i}: 'answerKey' {row.get('answerKey')!r} is not one of the labels {labels}")
    return _Item(question=row.get("question"), choices=texts, answer=answer, target=texts[answer])


def _hellaswag(row: dict, i: int, where: str) -> _Item:
    ctx = row.get("ctx")
    if ctx is None:
        ctx = " ".join(x for x in (row.get("ctx_a"), row.get("ctx_b")) if x)
    endings = list(row.get("endings") or [])
    answer = _letter_or_index(row.get("label"), len(endings))
    if answer is None:
        raise WinnowError(f"{where}: row {i}: 'label' {row.get('label')!r} is not an index into its "
                          f"{len(endings)} endings")
    return _Item(question=ctx, choices=endings, answer=answer, target=endings[answer])


def _truthfulqa_mc(row: dict, i: int, where: str) -> _Item:
    mc = row.get("mc1_targets") or {}
    choices, labels = list(mc.get("choices") or []), list(mc.get("labels") or [])
    if len(choices) != len(labels) or 1 not in labels:
        raise WinnowError(f"{where}: row {i}: 'mc1_targets' needs equally long 'choices' and 'labels' with one 1")
    answer = labels.index(1)
    return _Item(question=row.get("question"), choices=choices, answer=answer, target=choices[answer])


def _lm_eval(row: dict, i: int, where: str) -> _Item:
    p = next(f for f in _PROMPT_FIELDS if f in row)
    a = next(f for f in _ANSWER_FIELDS if f in row)
    return _prompt_choice_item(row.get(p), row.get(a), i, where, p)


#: format -> (converter, the fields it reads; the rest go to ``extra``)
FORMATS: dict[str, tuple[Callable[[dict, int, str], _Item], tuple[str, ...]]] = {
    "truthfulqa_mc": (_truthfulqa_mc, ("question", "mc1_targets")),
    "hellaswag": (_hellaswag, ("ctx", "ctx_a", "ctx_b", "endings", "label")),
    "arc": (_arc, ("question", "choices", "answerKey")),
    "mmlu": (_mmlu, ("question", "choices", "answer", "target")),
    "mmlu_prompt": (_mmlu_prompt, ("question", "answer")),
    "gsm8k": (_gsm8k, ("question", "answer")),
    "lm_eval": (_lm_eval, _PROMPT_FIELDS + _ANSWER_FIELDS),
}


def detect(table: pa.Table) -> str | None:
    """The format of a benchmark table from its field names (and answer values), or None."""
    cols = set(table.column_names)
    schema = table.schema
    if "mc1_targets" in cols and "question" in cols:
        return "truthfulqa_mc"
    if "endings" in cols and ({"ctx"} <= cols or {"ctx_a", "ctx_b"} <= cols) and "label" in cols:
        return "hellaswag"
    if "answerKey" in cols and "question" in cols and "choices" in cols and pa.types.is_struct(schema.field("choices").type):
        return "arc"
    if "question" in cols and ("choices" in cols or "target" in cols or "answer" not in cols):
        return "mmlu"
    if "question" in cols and "answer" in cols:
        answers = [a for a in table["answer"].to_pylist() if a is not None]
        letters = all(_letter_or_index(a, 26) is not None for a in answers)
        return "mmlu_prompt" if answers and letters else "gsm8k"
    if cols & set(_PROMPT_FIELDS) and cols & set(_ANSWER_FIELDS):
        return "lm_eval"
    return None


def _apply_mapping(table: pa.Table, fields: dict[str, str], where: str) -> pa.Table:
    """Rename the user's columns onto winnow's roles (``{role: column}``)."""
    unknown = sorted(set(fields) - set(ROLES))
    if unknown:
        raise WinnowError(f"{where}: unknown benchmark field role(s) {unknown}; roles are {', '.join(ROLES)}")
    missing = sorted(c for c in fields.values() if c not in table.column_names)
    if missing:
        raise WinnowError(f"{where}: mapped benchmark column(s) {missing} not found "
                          f"(fields: {', '.join(table.column_names)})")
    back = {col: role for role, col in fields.items()}
    names = [back.get(c, c) for c in table.column_names]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise WinnowError(f"{where}: field mapping gives two columns the name(s) {clash}; map or rename one")
    return table.rename_columns(names)


def _json_extra(row: dict, used: set[str]) -> str:
    rest = {k: v for k, v in row.items() if k not in used}
    if not rest:  # most rows of most formats: json.dumps was a third of reading 6k items
        return "{}"
    return json.dumps(rest, ensure_ascii=False, sort_keys=True, default=str)


def to_canonical(table: pa.Table, where: str, default_name: str, fmt: str = "auto",
                 fields: dict[str, str] | None = None) -> pa.Table:
    """Validate a benchmark table in a native format into :data:`CANONICAL_SCHEMA` rows.

    ``fmt`` is one of :data:`FORMATS` or ``auto``; ``fields`` maps roles to the user's columns.
    ``id`` defaults to ``<benchmark>/<row>``, ``benchmark`` to ``default_name`` (the file's stem);
    a ``context`` field is put before the question. Raises :class:`WinnowError` (see module doc).
    """
    if table.num_rows == 0:
        raise WinnowError(f"{where}: the benchmark is empty (0 rows)")
    if fields:
        table = _apply_mapping(table, fields, where)
    if fmt == "auto":
        fmt = detect(table) or ""
        if not fmt:
            raise WinnowError(
                f"{where}: cannot tell the benchmark format from its fields ({', '.join(table.column_names)}); "
                f"known formats: {', '.join(FORMATS)}; choose one with --benchmark-format or map fields "
                f"with --benchmark-field ROLE=COLUMN (roles: {', '.join(ROLES)})")
    if fmt not in FORMATS:
        raise WinnowError(f"{where}: unknown benchmark format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    convert, reads = FORMATS[fmt]
    needed = [f for f in reads if f in ("question", "endings", "mc1_targets", "answerKey")]
    absent = [f for f in needed if f not in table.column_names]
    if fmt == "lm_eval" and not (set(table.column_names) & set(_PROMPT_FIELDS) and set(table.column_names) & set(_ANSWER_FIELDS)):
        absent = [f"one of {_PROMPT_FIELDS} and one of {_ANSWER_FIELDS}"]
    if absent:
        raise WinnowError(f"{where}: format {fmt!r} needs field(s) {absent} (fields: {', '.join(table.column_names)})")
    used = set(reads) | {"id", "benchmark", "context"}
    out: dict[str, list[Any]] = {name: [] for name in CANONICAL_SCHEMA.names}
    empty: list[str] = []
    for i, row in enumerate(table.to_pylist()):
        item = convert(row, i, where)
        q = item["question"]
        if q is not None and not isinstance(q, str):
            raise WinnowError(f"{where}: row {i}: the question must be text, got {type(q).__name__}")
        q = q or ""
        if row.get("context"):
            q = f"{row['context']}\n{q}"
        name = row.get("benchmark") or default_name
        rid = str(row["id"]) if row.get("id") is not None else f"{name}/{i}"
        if not q.strip() and not str(item["target"] or "").strip():
            empty.append(rid)
        for k, v in (("id", rid), ("benchmark", name), ("question", q), ("choices", list(item["choices"])),
                     ("answer", int(item["answer"])), ("target", item["target"] or ""), ("format", fmt),
                     ("extra", _json_extra(row, used))):
            out[k].append(v)
    if empty:
        raise WinnowError(f"{where}: {len(empty)} item(s) have no searchable text (empty question and answer): "
                          f"{', '.join(map(repr, empty[:5]))}{' ...' if len(empty) > 5 else ''}")
    return pa.table(out, schema=CANONICAL_SCHEMA)
