"""The option file as a JSON schema for editors, and the option reference, from one walk.

``scripts/generate_schema.py`` writes both: ``options/schema.json`` (JSON Schema draft-07, which
the YAML language server behind VS Code and other editors reads through the first line of each
shipped option file) and ``docs/options.md``. The walk starts from each registered runner's
pydantic schema (:func:`utils.options.schema_for`), so the runners' own sections and the
automations' sections are included, and expands every :class:`~utils.options.Component` field
into one sub-schema per registered class, chosen by ``type`` and listing the class's keywords.

The schema is an editor aid: what it cannot say (checks that span sections, a runner's
``check_options``, classes registered by a file's ``imports:``) stays with the Python validator,
which remains the authority.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from typing_extensions import NotRequired, Required, is_typeddict

from utils.options import Component, Options, schema_for
from utils.registry import MODEL_REGISTRY, Registry
from utils.schedule import RAMPS, Schedule, Scheduled
from utils.steps import Step

SCHEMA_FILE = Path("options/schema.json")
REFERENCE_FILE = Path("docs/options.md")
DRAFT = "http://json-schema.org/draft-07/schema#"

# The strings utils.steps.resolve_step accepts: a whole number, or a fraction of the run ("0.8T").
STEP_STRING = r"^\s*([+-]?\d+|\d*\.?\d+\s*T)\s*$"

# How the reference names each registry's catalogue.
REGISTRY_TITLES = {
    "arch": "Networks",
    "loss": "Losses",
    "dataset": "Datasets",
    "metric": "Metrics",
    "optimizer": "Optimisers",
    "scheduler": "Learning-rate schedulers",
    "automation": "Training automations",
}

# Where an injected keyword's value comes from (utils.options.parse_options builds the context).
INJECTED_FROM = {
    "scale": "the top-level `scale`",
    "total_iter": "`train.total_iter`",
    "phase": "the dataset's key (`train`, else `val`)",
}

# Bounds from annotated_types / Field(...): attribute, JSON keyword, symbol in the reference.
_BOUNDS = (("gt", "exclusiveMinimum", ">"), ("ge", "minimum", "≥"), ("lt", "exclusiveMaximum", "<"),
           ("le", "maximum", "≤"))

# Validators that mark a type as a step or a schedule (``Annotated[int, BeforeValidator(...)]``).
_STEP_MARKS = tuple(typing.get_args(Step)[1:])
_SCHEDULE_MARKS = tuple(typing.get_args(Scheduled)[1:])


# --------------------------------------------------------------------------- small helpers


@dataclasses.dataclass
class TypeInfo:
    """A Python type as JSON schema, as text for the reference, and any description it carries
    (``Annotated[float, Field(description=...)]``)."""

    schema: dict[str, Any]
    text: str
    description: str = ""


@dataclasses.dataclass
class Row:
    """One key of a reference table."""

    key: str
    text: str
    default: str
    description: str


def summary(obj: Any) -> str:
    """The first paragraph of ``obj``'s own docstring on one line ('' without one).

    ``obj.__doc__`` rather than :func:`inspect.getdoc`, which would fall back to a base class's
    docstring (``nn.Module``'s, pydantic's) for a class that has none of its own.
    """
    doc = obj.__doc__ if isinstance(getattr(obj, "__doc__", None), str) else ""
    first = inspect.cleandoc(doc).split("\n\n")[0] if doc else ""
    return " ".join(first.split())


_ARGS_HEADER = re.compile(r"^(Args|Arguments|Parameters|Keyword Args|Keyword Arguments):\s*$")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def args_section(obj: Any) -> dict[str, str]:
    """Keyword descriptions from Google-style ``Args:`` sections: of the function's docstring, or of
    the class's and its bases' docstrings (and their own ``__init__``'s), the class's own first. A
    keyword the base documents (the datasets' shared options, a loss family's ``reduction``) is
    written once there; the caller looks up only the keywords of the signature."""
    out: dict[str, str] = {}
    owners = [c for c in obj.__mro__ if c is not object] if inspect.isclass(obj) else [obj]
    for owner in owners:
        init = vars(owner).get("__init__") if inspect.isclass(owner) else None
        for doc in (getattr(owner, "__doc__", None), getattr(init, "__doc__", None)):
            if isinstance(doc, str):
                for name, text in _parse_args(doc).items():
                    out.setdefault(name, text)
    return out


def _parse_args(doc: str) -> dict[str, str]:
    """The ``name: description`` entries of one docstring's ``Args:`` block."""
    out: dict[str, str] = {}
    inside, indent, current = False, None, None
    for line in inspect.cleandoc(doc).splitlines():
        if _ARGS_HEADER.match(line.strip()) and not line.startswith(" "):
            inside, indent, current = True, None, None
            continue
        if not inside:
            continue
        if not line.strip():
            current = None
            continue
        width = len(line) - len(line.lstrip())
        if width == 0:  # the next section (Returns:, Raises:, ...) or prose ends the block
            inside = False
            continue
        match = _ARG_LINE.match(line.strip())
        if match and (indent is None or width <= indent):
            indent, current = width, match.group(1).lstrip("*")
            out.setdefault(current, match.group(3).strip())
        elif current is not None:
            out[current] = f"{out[current]} {line.strip()}".strip()
    return out


def json_value(value: Any) -> tuple[bool, Any]:
    """``(True, value as JSON)`` for a default a YAML file could spell; ``(False, None)`` else."""
    if value is None or isinstance(value, bool | int | str):
        return True, value
    if isinstance(value, float):
        return (True, value) if math.isfinite(value) else (False, None)
    if isinstance(value, enum.Enum):
        return json_value(value.value)
    if isinstance(value, Path):
        return True, str(value)
    if isinstance(value, Schedule):
        return json_value(value.to_spec())
    if isinstance(value, list | tuple):
        items = [json_value(v) for v in value]
        return (True, [v for _, v in items]) if all(ok for ok, _ in items) else (False, None)
    if isinstance(value, dict):
        items = {str(k): json_value(v) for k, v in value.items()}
        return (True, {k: v for k, (_, v) in items.items()}) if all(ok for ok, _ in items.values()) else (False, None)
    return False, None


def default_text(value: Any) -> str:
    """A default as the reference shows it: its YAML/JSON spelling, else its repr (without a
    memory address, which would change from run to run)."""
    ok, plain = json_value(value)
    if ok:
        return f"`{json.dumps(plain, ensure_ascii=False)}`"
    return f"`{re.sub(r' at 0x[0-9a-fA-F]+', '', repr(value))}`"


def _cell(text: str) -> str:
    """A Markdown table cell: pipes escaped, on one line."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(rows: list[Row], first: str = "key") -> list[str]:
    if not rows:
        return ["(no keys)"]
    out = [f"| {first} | type | default | description |", "| --- | --- | --- | --- |"]
    out += [f"| `{r.key}` | {_cell(r.text)} | {_cell(r.default)} | {_cell(r.description)} |" for r in rows]
    return out


def _bounds(meta: Any) -> list[tuple[str, str, Any]]:
    """(JSON keyword, symbol, value) for each numeric bound ``meta`` sets."""
    found = []
    for attr, keyword, symbol in _BOUNDS:
        value = getattr(meta, attr, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found.append((keyword, symbol, value))
    return found


def _constrain(schema: dict[str, Any], keyword: str, value: Any) -> None:
    """Apply a numeric bound to the number branches of ``schema`` (a step's integer branch, a
    schedule's constant, a ``float | None``'s float)."""
    if "anyOf" in schema:
        for branch in schema["anyOf"]:
            _constrain(branch, keyword, value)
        return
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "integer" in kinds or "number" in kinds:
        schema[keyword] = value


def _bounded_text(text: str, bounds: list[tuple[str, str, Any]]) -> str:
    """``float > 0 | null`` rather than ``float | null > 0``: the bounds go to the members they
    constrain (not null, not a literal)."""
    if not bounds:
        return text
    label = ", ".join(f"{symbol} {value:g}" for _, symbol, value in bounds)
    parts = text.split(" | ")
    numeric = [p != "null" and not p.startswith('"') for p in parts]
    if not any(numeric):
        return f"{text} {label}"
    return " | ".join(f"{p} {label}" if n else p for p, n in zip(parts, numeric))


def _typeddict_required(key: str, hint: Any, owner: Any) -> bool:
    """Whether a TypedDict key is required. The ``NotRequired[...]`` wrapper decides when present:
    under ``from __future__ import annotations`` ``__required_keys__`` cannot see it (pydantic,
    which evaluates the annotations, does)."""
    origin = typing.get_origin(hint)
    if origin in (typing.NotRequired, NotRequired):
        return False
    if origin in (typing.Required, Required):
        return True
    return key in getattr(owner, "__required_keys__", ())


def field_hint(field: FieldInfo) -> Any:
    """The field's type with the constraints and markers pydantic moved into ``metadata``."""
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def field_default(field: FieldInfo) -> tuple[bool, Any]:
    """(has a default, the default) of a pydantic field."""
    if field.default_factory is not None:
        return True, field.default_factory()
    if field.default is PydanticUndefined or field.default is Ellipsis:
        return False, None
    return True, field.default


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The section model inside ``X``, ``X | None`` or ``list[X]`` (None for anything else)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list):
        found = [m for m in map(section_model, typing.get_args(annotation)) if m is not None]
        return found[0] if found else None
    return None


def find_component(hint: Any) -> Component | None:
    """The Component marker inside ``hint`` (``Annotated[dict, Component(...)] | None``)."""
    if typing.get_origin(hint) is Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, Component):
                return meta
    for arg in typing.get_args(hint):
        found = find_component(arg)
        if found is not None:
            return found
    return None


def runners() -> list[tuple[str, type]]:
    """Registered runners, the default ``model_type`` first (it applies when the key is absent)."""
    default = Options.model_fields["model_type"].default
    items = MODEL_REGISTRY.items()
    return sorted(items, key=lambda item: (item[0].lower() != str(default).lower(), item[0]))


STEP_REF = {"$ref": "#/definitions/step"}
SCHEDULE_REF = {"$ref": "#/definitions/schedule"}


def step_schema() -> dict[str, Any]:
    """An iteration count (utils.steps.resolve_step): a whole number or a string like ``0.8T``."""
    return {"description": "an iteration count: a whole number, or a fraction of the run such as 0.8T",
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": STEP_STRING}]}


def schedule_schema() -> dict[str, Any]:
    """A number, a ``{step: value}`` mapping or a ramp (utils.schedule.Schedule.parse)."""
    return {"description": "a number, a {step: value} mapping or a ramp {type: linear | cosine, from, to, start, end}",
            "anyOf": [
                {"type": "number"},
                {"type": "object", "description": "piecewise constant: {step: value}, 0 before the first step",
                 "minProperties": 1, "propertyNames": {"pattern": STEP_STRING},
                 "additionalProperties": {"type": "number"}},
                {"type": "object", "description": "a ramp from start (until step 'from') to end (from step 'to' on)",
                 "properties": {"type": {"enum": list(RAMPS)}, "from": STEP_REF, "to": STEP_REF,
                                "start": {"type": "number"}, "end": {"type": "number"}},
                 "required": ["type", "from", "to", "start", "end"], "additionalProperties": False},
            ]}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with a reference to the step or schedule definition replaced by its content, so
    bounds can be added (draft-07 ignores keywords beside ``$ref``)."""
    if schema == STEP_REF:
        return step_schema()
    if schema == SCHEDULE_REF:
        return schedule_schema()
    if "anyOf" in schema:
        return {**schema, "anyOf": [_inline(b) for b in schema["anyOf"]]}
    return schema


def _union(parts: list[TypeInfo]) -> TypeInfo:
    """``A | B``: one ``type`` list when every member is a bare JSON type, else ``anyOf``."""
    branches: list[dict[str, Any]] = []
    for part in parts:
        schema = part.schema
        branches.extend(schema["anyOf"] if set(schema) == {"anyOf"} else [schema])
    text = " | ".join(p.text for p in parts)
    description = next((p.description for p in parts if p.description), "")
    if all(set(b) == {"type"} and isinstance(b["type"], str) for b in branches):
        kinds = list(dict.fromkeys(b["type"] for b in branches))
        return TypeInfo({"type": kinds if len(kinds) > 1 else kinds[0]}, text, description)
    return TypeInfo({"anyOf": branches}, text, description)


# ------------------------------------------------------------------------------- the walk


@dataclasses.dataclass
class Kind:
    """One way a registry is used: a head model, skipped and injected keywords (e.g. losses in
    ``train.losses`` with :class:`~utils.options.LossEntry`, or in ``train.gan``)."""

    name: str
    comp: Component
    used_at: list[str] = dataclasses.field(default_factory=list)


class SchemaBuilder:
    """Walks the runners' schemas once; :meth:`schema` and :meth:`reference` render the result."""

    def __init__(self) -> None:
        self.definitions: dict[str, dict[str, Any]] = {"step": step_schema(), "schedule": schedule_schema()}
        self._model_names: dict[type, str] = {}
        self._kinds: dict[tuple, Kind] = {}
        self._runners = runners()
        self._schema: dict[str, Any] | None = None
        # runner name → its root section model (its own sections and the automations' included)
        self._root = {name: schema_for(runner) for name, runner in self._runners}

    # ---------------------------------------------------------------- types

    def translate(self, hint: Any, where: str = "") -> TypeInfo:
        """JSON schema and reference text of a type hint; ``where`` is the option path, recorded
        for component fields so the catalogue can say where each registry is used."""
        if hint is Any or hint is object or hint is inspect.Parameter.empty:
            return TypeInfo({}, "any")
        if hint is None or hint is type(None):
            return TypeInfo({"type": "null"}, "null")
        origin = typing.get_origin(hint)
        if origin is Annotated:
            return self._annotated(hint, where)
        if origin in (Union, types.UnionType):
            return _union([self.translate(arg, where) for arg in typing.get_args(hint)])
        if origin is Literal:
            values = list(typing.get_args(hint))
            return TypeInfo({"enum": values}, " | ".join(json.dumps(v) for v in values))
        if origin in (typing.Required, typing.NotRequired, Required, NotRequired):
            return self.translate(typing.get_args(hint)[0], where)
        if origin is tuple:
            return self._tuple(typing.get_args(hint), where)
        if origin in (list, set, frozenset) or (inspect.isclass(origin) and issubclass(origin, Sequence)
                                                 and not issubclass(origin, str)):
            args = typing.get_args(hint)
            item = self.translate(args[0], where) if args else TypeInfo({}, "any")
            return TypeInfo({"type": "array", "items": item.schema}, f"list[{item.text}]")
        if origin is dict or (inspect.isclass(origin) and issubclass(origin, Mapping)):
            args = typing.get_args(hint)
            value = self.translate(args[1], where) if len(args) == 2 else TypeInfo({}, "any")
            key = self.translate(args[0], where).text if args else "str"
            return TypeInfo({"type": "object", "additionalProperties": value.schema}, f"dict[{key}, {value.text}]")
        return self._plain_class(hint, where)

    def _plain_class(self, hint: Any, where: str) -> TypeInfo:
        simple = {bool: ("boolean", "bool"), int: ("integer", "int"), float: ("number", "float"),
                  str: ("string", "str"), Path: ("string", "path")}
        if hint in simple:
            kind, text = simple[hint]
            return TypeInfo({"type": kind}, text)
        if hint is Schedule:
            return TypeInfo(dict(SCHEDULE_REF), "schedule")
        if hint in (list, tuple, set):
            return TypeInfo({"type": "array"}, "list")
        if hint is dict:
            return TypeInfo({"type": "object"}, "mapping")
        if inspect.isclass(hint) and issubclass(hint, enum.Enum):
            values = [m.value for m in hint]
            return TypeInfo({"enum": values}, " | ".join(json.dumps(v) for v in values))
        if inspect.isclass(hint) and issubclass(hint, BaseModel):
            name = self.model_definition(hint)
            return TypeInfo({"$ref": f"#/definitions/{name}"}, f"[section](#{anchor('section', where)})")
        if is_typeddict(hint):  # typing_extensions' check knows both kinds of TypedDict
            return self._typeddict(hint, where)
        return TypeInfo({}, getattr(hint, "__name__", str(hint)))  # e.g. torch.Tensor: not an option value

    def _tuple(self, args: tuple, where: str) -> TypeInfo:
        if len(args) == 2 and args[1] is Ellipsis:
            item = self.translate(args[0], where)
            return TypeInfo({"type": "array", "items": item.schema}, f"list[{item.text}]")
        items = [self.translate(a, where) for a in args]
        schema = {"type": "array", "items": [i.schema for i in items], "additionalItems": False,
                  "minItems": len(items), "maxItems": len(items)}
        return TypeInfo(schema, "[" + ", ".join(i.text for i in items) + "]")

    def _typeddict(self, hint: Any, where: str) -> TypeInfo:
        hints = typing.get_type_hints(hint, include_extras=True)
        props = {k: self.translate(v, where) for k, v in hints.items()}
        schema: dict[str, Any] = {"type": "object", "properties": {k: t.schema for k, t in props.items()}}
        required = [k for k, v in hints.items() if _typeddict_required(k, v, hint)]
        if required:
            schema["required"] = required
        config = getattr(hint, "__pydantic_config__", None) or {}
        if config.get("extra") == "forbid":
            schema["additionalProperties"] = False
        desc = summary(hint)
        if desc:
            schema["description"] = desc
        text = "{" + ", ".join(f"{k}{'' if k in required else '?'}: {t.text}" for k, t in props.items()) + "}"
        return TypeInfo(schema, text)

    def _annotated(self, hint: Any, where: str) -> TypeInfo:
        base, *extras = typing.get_args(hint)
        for meta in extras:
            if isinstance(meta, Component):
                return self.component(meta, where)
        if any(m in _SCHEDULE_MARKS for m in extras):
            info = TypeInfo(dict(SCHEDULE_REF), "schedule")
        elif any(m in _STEP_MARKS for m in extras):
            info = TypeInfo(dict(STEP_REF), "step")
        else:
            info = self.translate(base, where)
        bounds: list[tuple[str, str, Any]] = []
        description = info.description
        for meta in extras:
            parts = [meta, *getattr(meta, "metadata", ())] if isinstance(meta, FieldInfo) else [meta]
            for part in parts:
                bounds.extend(_bounds(part))
            if isinstance(meta, FieldInfo) and meta.description:
                description = meta.description
        # a copy: bounds must not leak into shared pieces
        schema = json.loads(json.dumps(_inline(info.schema) if bounds else info.schema))
        for keyword, _, value in bounds:
            _constrain(schema, keyword, value)
        return TypeInfo(schema, _bounded_text(info.text, bounds), description)

    # ------------------------------------------------------------- sections

    def model_definition(self, model: type[BaseModel]) -> str:
        """The definition name of a static section (built on first use)."""
        if model in self._model_names:
            return self._model_names[model]
        name = model.__name__
        while name in self.definitions:  # two classes of one name: keep both
            name += "_"
        self._model_names[model] = name
        self.definitions[name] = {}  # reserved first: a section may refer to itself
        self.definitions[name] = self.object_schema(model, summary(model))
        return name

    def object_schema(self, model: type[BaseModel], description: str) -> dict[str, Any]:
        props: dict[str, Any] = {}
        required: list[str] = []
        for key, field in model.model_fields.items():
            props[key] = self.property_schema(field)
            if field.is_required():
                required.append(key)
        schema: dict[str, Any] = {"type": "object"}
        if description:
            schema["description"] = description
        schema["properties"] = props
        if required:
            schema["required"] = required
        schema["additionalProperties"] = False
        return schema

    def property_schema(self, field: FieldInfo) -> dict[str, Any]:
        info = self.translate(field_hint(field))
        schema = dict(info.schema)
        if field.description:
            schema["description"] = field.description
        has_default, default = field_default(field)
        ok, plain = json_value(default) if has_default else (False, None)
        if ok:
            schema["default"] = plain
        return schema

    # ----------------------------------------------------------- components

    def kind(self, comp: Component) -> Kind:
        """The component kind of ``comp``: its dispatcher and per-class definitions are built once
        and shared by every field of the same registry, head, skip and inject."""
        key = (id(comp.registry), comp.head, comp.skip, comp.inject)
        if key not in self._kinds:
            base = comp.registry.name + (f":{comp.head.__name__}" if comp.head is not None else "")
            name, n = base, 1
            while any(k.name == name for k in self._kinds.values()):
                n += 1
                name = f"{base}-{n}"
            self._kinds[key] = Kind(name, comp)
            self._build_kind(self._kinds[key])
        return self._kinds[key]

    def component(self, comp: Component, where: str) -> TypeInfo:
        """The schema of a component field: one section, a list or a mapping of them."""
        kind = self.kind(comp)
        label = comp.registry.name
        suffix = {"one": "", "list": "[]", "dict": ".<name>"}[comp.many]
        if where and f"{where}{suffix}" not in kind.used_at:
            kind.used_at.append(f"{where}{suffix}")
        link = f"[{label}](#{anchor('kind', kind.name)})"
        if comp.fixed_type is not None:
            name = self._canonical(comp.registry, comp.fixed_type)
            return TypeInfo({"$ref": f"#/definitions/{kind.name}.{name}"}, f"{link} `{name}` section")
        ref = {"$ref": f"#/definitions/{kind.name}"}
        if comp.many == "one":
            return TypeInfo(ref, f"{link} component")
        if comp.many == "list":
            return TypeInfo({"type": "array", "items": ref}, f"list of {link} components")
        if comp.type_from_key:
            props = {n: {"$ref": f"#/definitions/{kind.name}.{n}"} for n in comp.registry}
            return TypeInfo({"type": "object", "properties": props, "additionalProperties": False},
                            f"{link} sections by name")
        schema: dict[str, Any] = {"type": "object", "additionalProperties": ref}
        if comp.keys:
            # re.match anchors at the start only; so does this pattern
            schema["propertyNames"] = {"pattern": f"^(?:{comp.keys})"}
        return TypeInfo(schema, f"{link} components by name")

    @staticmethod
    def _canonical(registry: Registry, name: str) -> str:
        """The registry's own spelling of ``name`` (lookups are case-insensitive)."""
        return next((n for n in registry if n.lower() == name.lower()), name)

    def _build_kind(self, kind: Kind) -> None:
        comp = kind.comp
        names = list(comp.registry)
        branches = []
        for name, obj in comp.registry.items():
            self.definitions[f"{kind.name}.{name}"] = self.class_schema(comp, name, obj)
            branches.append({"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                             "then": {"$ref": f"#/definitions/{kind.name}.{name}"}})
        self.definitions[kind.name] = {
            "type": "object",
            "description": f"a registered {comp.registry.name}, named by type; the other keys are its keywords",
            "properties": {"type": {"enum": names, "description": f"registered {comp.registry.name} name"}},
            "required": ["type"],
            "allOf": branches,
        }

    def keyword_rows(self, comp: Component, obj: Any) -> tuple[list[tuple[str, dict[str, Any], Row, bool]], bool]:
        """(name, schema, reference row, required) of each keyword of ``obj``, and whether it
        also takes ``**kwargs`` (then unknown keys cannot be flagged)."""
        func = obj.__init__ if inspect.isclass(obj) else obj
        try:
            hints = typing.get_type_hints(func, include_extras=True)
        except Exception:  # noqa: BLE001 - an unresolvable hint only loses its type here, as in signature_model
            hints = {}
        docs = args_section(obj)
        out, open_ended = [], False
        for name, param in inspect.signature(func).parameters.items():
            if name == "self" or name in comp.skip or param.kind == param.VAR_POSITIONAL:
                continue
            if param.kind == param.VAR_KEYWORD:
                open_ended = True
                continue
            info = self.translate(hints.get(name, Any), "")
            schema = json.loads(json.dumps(info.schema))
            description = info.description or docs.get(name, "")
            has_default = param.default is not param.empty
            if name in comp.inject:
                source = INJECTED_FROM.get(name, "the trainer")
                description = f"filled in from {source} when omitted" + (f"; {description}" if description else "")
                default = "injected"
            elif has_default:
                ok, plain = json_value(param.default)
                if ok:
                    schema["default"] = plain
                default = default_text(param.default)
            else:
                default = "**required**"
            if description:
                schema["description"] = description
            required = not has_default and name not in comp.inject
            out.append((name, schema, Row(name, info.text, default, description), required))
        return out, open_ended

    def class_schema(self, comp: Component, name: str, obj: Any) -> dict[str, Any]:
        """The complete section of one registered class: ``type``, the head's keys and the class's
        keywords, nothing else."""
        props: dict[str, Any] = {"type": {"const": name}}
        head_fields = {k: f for k, f in (comp.head.model_fields.items() if comp.head else ()) if k != "type"}
        for key, field in head_fields.items():
            props[key] = self.property_schema(field)
        keywords, open_ended = self.keyword_rows(comp, obj)
        required = []
        for key, schema, _, needed in keywords:
            if key in head_fields:  # the runner takes that key before the class sees it
                continue
            props[key] = schema
            if needed:
                required.append(key)
        schema: dict[str, Any] = {"type": "object"}
        if summary(obj):
            schema["description"] = summary(obj)
        schema["properties"] = props
        if required and "enabled" in head_fields:
            # a switched-off section (enabled: false) needs none of its required keywords
            schema["if"] = {"properties": {"enabled": {"const": False}}, "required": ["enabled"]}
            schema["else"] = {"required": required}
        elif required:
            schema["required"] = required
        if not open_ended:
            schema["additionalProperties"] = False
        return schema

    # -------------------------------------------------------------- runners

    def schema(self) -> dict[str, Any]:
        """The whole option file: the runner named by ``model_type`` picks the root section."""
        if self._schema is not None:
            return self._schema
        names = [name for name, _ in self._runners]
        default = names[0]
        branches = []
        for name, model in self._root.items():
            cond: dict[str, Any] = {"properties": {"model_type": {"const": name}}}
            if name != default:  # without model_type the default runner applies
                cond["required"] = ["model_type"]
            branches.append({"if": cond, "then": {"$ref": f"#/definitions/{self.model_definition(model)}"}})
        root = {
            "$schema": DRAFT,
            "$comment": "Generated by scripts/generate_schema.py from utils/options.py and the registries; "
                        "do not edit by hand.",
            "title": "upforge option file",
            "description": "Options of train.py and test.py; python train.py -opt FILE --check is the authority.",
            "type": "object",
            "properties": {"model_type": {"enum": names, "default": default,
                                          "description": Options.model_fields["model_type"].description}},
            "allOf": branches,
        }
        root["definitions"] = dict(sorted(self.definitions.items()))
        self._schema = root
        return root

    # ------------------------------------------------------------ reference

    def reference(self) -> str:
        """``docs/options.md``: every section and key, then the component catalogue."""
        self.schema()  # the kinds are made in the schema's order, so the catalogue's order is fixed
        lines = [
            "# Option reference",
            "",
            "<!-- Generated by `python scripts/generate_schema.py` from utils/options.py, the runners' option "
            "fields and the registered components; do not edit by hand. -->",
            "",
            "Every key of an option file (train.py and test.py), with its type, default and meaning. The same "
            "walk writes `options/schema.json`, a JSON schema that editors with the YAML language server "
            "(e.g. VS Code's YAML extension) use to complete and check keys as you type; each shipped option "
            "file points at it in its first line:",
            "",
            "```yaml",
            "# yaml-language-server: $schema=../../schema.json",
            "```",
            "",
            "The schema cannot express everything: `python train.py -opt FILE --check` remains the authority "
            "(checks across sections, each runner's own checks, and classes registered by `imports:`, which "
            "the schema does not know).",
            "",
            "## Value types",
            "",
            "- **step**: an iteration count, `1000`, or a fraction of the run, `0.8T` (0.8 × `train.total_iter`).",
            "- **schedule**: a value that may change over the run: a number; `{step: value, ...}` (piecewise "
            "constant, 0 before the first step); or a ramp `{type: linear | cosine, from: step, to: step, "
            "start: number, end: number}`.",
            "- **component**: a mapping that names a registered class with `type:`; its other keys are that "
            "class's keywords (see the [catalogue](#components)), plus the keys the trainer itself handles "
            "there (listed with each use).",
            "",
            "## Runners",
            "",
            "`model_type` picks the runner; some sections exist only for some runners (marked below).",
            "",
            "| model_type | description |",
            "| --- | --- |",
        ]
        lines += [f"| `{name}` | {_cell(summary(runner))} |" for name, runner in self._runners]
        lines += self._section_docs()
        lines += self._component_docs()
        return "\n".join(lines).rstrip() + "\n"

    def _section_docs(self) -> list[str]:
        """Tables of the static sections, each the union over the runners."""
        out: list[str] = []
        queue: list[tuple[str, dict[str, type[BaseModel]]]] = [("", dict(self._root))]
        while queue:
            path, models = queue.pop(0)
            title = "Top level" if not path else f"`{path}`"
            out += ["", f'<a id="{anchor("section", path)}"></a>', "", f"## {title}", ""]
            intro = next((summary(m) for m in models.values() if summary(m)), "") if path else ""
            if intro:
                out += [intro, ""]
            rows = []
            for key, owners in self._union_keys(models):
                field = models[owners[0]].model_fields[key]
                where = f"{path}.{key}" if path else key
                nested = {r: section_model(models[r].model_fields[key].annotation) for r in owners}
                if all(nested.values()) and find_component(field_hint(field)) is None:
                    many = typing.get_origin(field.annotation) is list
                    sub = where + ("[]" if many else "")
                    queue.append((sub, nested))
                    text = f"{'list of ' if many else ''}[section](#{anchor('section', sub)})"
                    if type(None) in typing.get_args(field.annotation):
                        text += " | null"
                else:
                    text = self.translate(field_hint(field), where).text
                has_default, default = field_default(field)
                if not has_default:
                    default_cell = "**required**"
                elif isinstance(default, BaseModel):
                    default_cell = "(section defaults)"
                else:
                    default_cell = default_text(default)
                description = field.description or ""
                if len(owners) < len(models):
                    description += f" ({', '.join(owners)} only)"
                rows.append(Row(key, text, default_cell, description))
            out += table(rows)
        return out

    @staticmethod
    def _union_keys(models: dict[str, type[BaseModel]]) -> list[tuple[str, list[str]]]:
        """Every key of the runners' versions of a section, in order, with the runners having it."""
        keys: dict[str, list[str]] = {}
        for runner, model in models.items():
            for key in model.model_fields:
                keys.setdefault(key, []).append(runner)
        return list(keys.items())

    def _component_docs(self) -> list[str]:
        out = ["", '<a id="components"></a>', "", "## Components", "",
               "Each registered class with its keywords. Where a registry is used with keys of the trainer's "
               "own (the head of a section), those come first."]
        by_registry: dict[str, list[Kind]] = {}
        for kind in self._kinds.values():
            by_registry.setdefault(kind.comp.registry.name, []).append(kind)
        for reg_name in sorted(by_registry, key=lambda n: (list(REGISTRY_TITLES).index(n)
                                                          if n in REGISTRY_TITLES else len(REGISTRY_TITLES), n)):
            kinds = by_registry[reg_name]
            registry = kinds[0].comp.registry
            out += ["", f"### {REGISTRY_TITLES.get(reg_name, reg_name.capitalize())} (`{reg_name}`)"]
            for kind in kinds:
                out += self._kind_docs(kind)
            out += self._catalogue(registry, kinds)
        return out

    def _kind_docs(self, kind: Kind) -> list[str]:
        comp = kind.comp
        where = ", ".join(f"`{w}`" for w in kind.used_at) or "(no option path)"
        out = ["", f'<a id="{anchor("kind", kind.name)}"></a>', "", f"Used at {where}."]
        if comp.type_from_key:
            out[-1] += " The key names the class; `type` may be left out."
        if comp.head is not None:
            rows = []
            for key, field in comp.head.model_fields.items():
                if key == "type":  # the class's name: described with every component
                    continue
                info = self.translate(field_hint(field), "")
                has_default, default = field_default(field)
                rows.append(Row(key, info.text, default_text(default) if has_default else "**required**",
                                field.description or ""))
            out += ["", "Keys the trainer handles there, besides the class's keywords:", ""] + table(rows)
        if comp.inject:
            froms = ", ".join(f"`{n}` from {INJECTED_FROM.get(n, 'the trainer')}" for n in comp.inject)
            out += ["", f"Keywords filled in when omitted: {froms}."]
        if comp.skip:
            out += ["", "Keywords the trainer passes itself (never written): "
                    + ", ".join(f"`{n}`" for n in comp.skip) + "."]
        return out

    def _catalogue(self, registry: Registry, kinds: list[Kind]) -> list[str]:
        # skipped and injected keywords of every use of the registry (a class is listed once)
        comp = dataclasses.replace(kinds[0].comp, skip=tuple(sorted({s for k in kinds for s in k.comp.skip})),
                                   inject=tuple(sorted({s for k in kinds for s in k.comp.inject})))
        out: list[str] = []
        for name, obj in registry.items():
            out += ["", f"#### `{name}`", ""]
            if summary(obj):
                out += [summary(obj), ""]
            keywords, open_ended = self.keyword_rows(comp, obj)
            out += table([row for _, _, row, _ in keywords], "keyword")
            if open_ended:
                out += ["", "It also takes further keywords (`**kwargs`), which are not checked here."]
        return out


def anchor(kind: str, name: str) -> str:
    """An explicit HTML anchor id (the reference links with these rather than relying on a
    renderer's heading slugs)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{kind}-{slug}" if slug else kind


# ------------------------------------------------------------------------------- public


def build() -> tuple[dict[str, Any], str]:
    """(the JSON schema, the Markdown reference) from one walk."""
    builder = SchemaBuilder()
    schema = builder.schema()
    return schema, builder.reference()


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def generated_files(root: str | Path) -> dict[Path, str]:
    """Path → text of every generated file under the repository ``root``."""
    schema, reference = build()
    root = Path(root)
    return {root / SCHEMA_FILE: render_schema(schema), root / REFERENCE_FILE: reference}


def schema_line(option_file: str | Path, root: str | Path) -> str:
    """The first line a shipped option file carries: the schema path relative to the file."""
    rel = os.path.relpath((Path(root) / SCHEMA_FILE).resolve(), Path(option_file).resolve().parent)
    return f"# yaml-language-server: $schema={Path(rel).as_posix()}"


def shipped_option_files(root: str | Path) -> list[Path]:
    """Every option file under ``options/``, sorted."""
    folder = Path(root) / SCHEMA_FILE.parent
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yml", ".yaml"))
