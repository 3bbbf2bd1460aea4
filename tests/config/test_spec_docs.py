"""docs/spec.md against the spec's pydantic model, so that the two cannot drift apart.

Every key path of the model (walked recursively through nested sections) must have one row
in the doc's key tables (``| key | type | default | meaning |``) and no row may name a key
the model lacks; each documented default, read as YAML and validated by the field's own
validators (durations, sizes...), must equal the model's default; the doc's examples must
load, the random and optuna search examples setting every key of their sections.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError, create_model
from pydantic.fields import FieldInfo

from foldrunner.errors import SpecError
from foldrunner.config.spec import LimitsSpec, Spec, load_spec
from foldrunner.config.units import format_duration, parse_duration, parse_size
from foldrunner.config.yamlload import parse_yaml

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "spec.md"
FOLDS = ROOT / "tests" / "folds"
KEY_HEADER = re.compile(r"\|\s*key\s*\|\s*type\s*\|\s*default\s*\|\s*meaning\s*\|")
REQUIRED = "required"


# ---------------------------------------------------------------- the model's side
def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The BaseModel classes that a field's annotation is, unwrapping Optional, Union
    and Annotated (not lists or dicts: their items have no fixed key path)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = get_origin(annotation)
    if origin is Annotated:
        return _models_in(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    return []


def model_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every dotted key path of ``model`` (sections and their keys), with its field."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        yield key, field
        for sub in _models_in(field.annotation):
            yield from model_keys(sub, f"{key}.")


def _adapter(field: FieldInfo) -> TypeAdapter[Any]:
    """A validator (and serializer) for one field, its constraints and validators included."""
    if field.metadata:
        return TypeAdapter(Annotated[(field.annotation, *field.metadata)])  # type: ignore[valid-type]
    return TypeAdapter(field.annotation)


def render(value: Any) -> str:
    """A default as the doc writes it: YAML flow style (None -> null, True -> true, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):
        try:
            empty = type(value)()
        except ValidationError:  # a section with no default of its own (search.optuna.pruner)
            empty = None
        return "{}" if value == empty else render(value.model_dump(mode="json"))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {render(v)}" for k, v in value.items()) + "}"
    return str(value)


def render_default(field: FieldInfo) -> str:
    """The model's default of a field as the doc would write it (``required`` without one);
    durations come out as ``30m`` through the field's own serializer."""
    if field.is_required():
        return REQUIRED
    default = field.get_default(call_default_factory=True)
    if isinstance(default, (BaseModel, Path)) or default is None:
        return render(default)
    return render(_adapter(field).dump_python(default, mode="json"))


def default_problem(key: str, field: FieldInfo, documented: str) -> str | None:
    """Why the doc's default of ``key`` differs from the model's, or None if it does not."""
    shown = f"{key}: the doc says {documented!r}, the model's default is {render_default(field)!r}"
    if field.is_required() or documented == REQUIRED:
        return None if field.is_required() and documented == REQUIRED else shown
    default = field.get_default(call_default_factory=True)
    value, _, problems = parse_yaml(documented)
    if problems:
        return f"{shown} (not YAML: {problems})"
    if isinstance(default, Path):  # workdir: validating it would resolve it against the cwd
        return None if isinstance(value, str) and Path(value) == default else shown
    if value == default and type(value) is type(default):
        return None
    try:
        parsed = _adapter(field).validate_python(value)
    except Exception as exc:  # noqa: BLE001 - any refusal means the doc is wrong
        return f"{shown} (the model refuses it: {exc})"
    return None if parsed == default else shown


# ---------------------------------------------------------------- the doc's side
def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def doc_rows() -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every row of every key table, in order."""
    rows, in_table = [], False
    for line in doc_text().splitlines():
        if KEY_HEADER.fullmatch(line.strip()):
            in_table = True
            continue
        if not line.strip().startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if not in_table or set("".join(cells)) <= set("-: "):
            continue
        assert len(cells) == 4, f"a key-table row without 4 cells: {line}"
        key, kind, default, meaning = cells
        assert re.fullmatch(r"`[^`]+`", key), f"the key is not one `code` span: {line}"
        assert re.fullmatch(r"`[^`]+`|" + REQUIRED, default), (
            f"the default is neither one `code` span nor {REQUIRED}: {line}")
        rows.append((key.strip("`"), kind, default.strip("`"), meaning))
    return rows


def doc_example(label: str) -> str:
    """The ```yaml block right after ``<!-- spec-example: LABEL -->``."""
    match = re.search(rf"<!-- spec-example: {re.escape(label)} -->\s*```yaml\n(.*?)\n```",
                      doc_text(), re.S)
    assert match, f"docs/spec.md has no yaml block marked <!-- spec-example: {label} -->"
    return match.group(1)


def section(title: str) -> str:
    """The text under the ``## TITLE`` heading, up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", doc_text(), re.S | re.M)
    assert match, f"docs/spec.md has no section '## {title}'"
    return match.group(1)


def key_diff(model: type[BaseModel], documented: set[str]) -> str | None:
    """A message naming the model's undocumented keys and the doc's unknown ones."""
    keys = {k for k, _ in model_keys(model)}
    missing, extra = sorted(keys - documented), sorted(documented - keys)
    if not missing and not extra:
        return None
    return (f"docs/spec.md and the spec model disagree:\n"
            f"  in the model, not documented: {missing}\n"
            f"  documented, not in the model: {extra}")


def _leaves(data: Any, prefix: str = "") -> set[str]:
    """The dotted key paths that a loaded YAML mapping sets (mappings' keys, recursively)."""
    out: set[str] = set()
    for key, value in data.items():
        out.add(f"{prefix}{key}")
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{key}.")
    return out


def _load(text: str) -> Spec:
    data, _, problems = parse_yaml(text)
    assert not problems, problems
    return load_spec(data, base_dir=FOLDS)


# ---------------------------------------------------------------- the tests
def test_every_model_key_is_documented_and_no_other() -> None:
    keys = [k for k, _, _, _ in doc_rows()]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    assert not twice, f"keys documented more than once: {twice}"
    problem = key_diff(Spec, set(keys))
    assert problem is None, problem


def test_every_documented_default_is_the_models() -> None:
    fields = dict(model_keys(Spec))
    problems = [default_problem(key, fields[key], default)
                for key, _, default, _ in doc_rows() if key in fields]
    problems = [p for p in problems if p]
    assert not problems, "wrong defaults in docs/spec.md:\n  " + "\n  ".join(problems)


def test_every_row_has_a_type_and_a_meaning() -> None:
    bare = [key for key, kind, _, meaning in doc_rows() if not kind or len(meaning) < 10]
    assert not bare, f"rows without a type or a meaning: {bare}"


def test_render_writes_defaults_the_way_the_doc_does() -> None:
    fields = dict(model_keys(Spec))
    assert render_default(fields["name"]) == "required"
    assert render_default(fields["search"]) == "null"
    assert render_default(fields["cv"]) == "{}"
    assert render_default(fields["limits.timeout"]) == format_duration(1800.0) == "30m"
    assert render_default(fields["resources.spares"]) == "true"
    assert render_default(fields["retry.on"]) == "[timeout, crashed, memory]"
    assert render_default(fields["workdir"]) == "."


def test_an_undocumented_key_is_caught() -> None:
    """A key added to the model (at the top or in a section) without docs fails the check."""
    documented = {k for k, _, _, _ in doc_rows()}
    NewLimits = create_model("NewLimits", __base__=LimitsSpec, max_threads=(int, 4))
    NewSpec = create_model("NewSpec", __base__=Spec, limits=(NewLimits, NewLimits()),
                           scheduler=(str, "fifo"))
    problem = key_diff(NewSpec, documented)
    assert problem is not None and "limits.max_threads" in problem and "'scheduler'" in problem
    fields = dict(model_keys(NewSpec))
    assert default_problem("limits.max_threads", fields["limits.max_threads"], "4") is None
    assert default_problem("limits.max_threads", fields["limits.max_threads"], "5") is not None
    assert default_problem("limits.timeout", fields["limits.timeout"], "1800") is None
    assert default_problem("limits.timeout", fields["limits.timeout"], "20m") is not None


def test_the_complete_example_loads_and_sets_every_key() -> None:
    text = doc_example("complete")
    spec = _load(text)
    assert spec.name and spec.entrypoint and spec.search is not None
    data, _, _ = parse_yaml(text)
    exclusive = {k for k, _ in model_keys(Spec) if k.startswith(("search.random", "search.optuna"))}
    unset = sorted({k for k, _ in model_keys(Spec)} - exclusive - _leaves(data))
    assert not unset, f"the complete example leaves out: {unset}"


def test_the_complete_example_loads_from_a_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(doc_example("complete"), encoding="utf-8")
    spec = load_spec(path, [f"workdir={FOLDS}", "entrypoint=matrix:train",
                            "limits.timeout=10m", "cv.folds=3"])
    assert spec.workdir == FOLDS.resolve() and spec.entrypoint == "matrix:train"
    assert spec.limits.timeout == 600 and spec.cv.folds == 3


def test_the_random_search_example_loads_and_sets_every_random_key() -> None:
    complete, _, _ = parse_yaml(doc_example("complete"))
    search, _, problems = parse_yaml(doc_example("random-search"))
    assert not problems, problems
    spec = load_spec({**complete, **search}, base_dir=FOLDS)
    assert spec.search is not None and spec.search.random is not None
    wanted = {k for k, _ in model_keys(Spec) if k.startswith("search.random")}
    assert wanted <= _leaves(search), sorted(wanted - _leaves(search))


def test_the_optuna_search_example_loads_and_sets_every_optuna_key() -> None:
    complete, _, _ = parse_yaml(doc_example("complete"))
    search, _, problems = parse_yaml(doc_example("optuna-search"))
    assert not problems, problems
    spec = load_spec({**complete, **search}, base_dir=FOLDS)
    assert spec.search is not None and spec.search.optuna is not None
    wanted = {k for k, _ in model_keys(Spec) if k.startswith("search.optuna")
              and not k.startswith(("search.optuna.pruner.wilcoxon",  # one pruner at a time
                                    "search.optuna.pruner.percentile"))}
    assert wanted <= _leaves(search), sorted(wanted - _leaves(search))


def test_the_units_tables_are_right() -> None:
    durations_text, _, sizes_text = section("Durations and sizes").partition("A **size**")
    durations = re.findall(r"^\| `([^`]+)` \| ([\d.]+) \|$", durations_text, re.M)
    assert len(durations) >= 5
    for written, seconds in durations:
        assert parse_duration(parse_yaml(written)[0]) == float(seconds), written
    sizes = re.findall(r"^\| `([^`]+)` \| (\d+)\b", sizes_text, re.M)
    assert len(sizes) >= 4
    for written, size in sizes:
        assert parse_size(parse_yaml(written)[0]) == int(size), written
