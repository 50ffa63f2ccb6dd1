#!/usr/bin/env python3
"""Validates dashboard JSON against Grafana's dashboard schema and our rules.

    python3 scripts/observability/validate_dashboards.py FILE.json ...

Grafana itself is not installable from the registries this project uses
(no Debian package, no PyPI or npm distribution of the server), so the
schema check uses the model types of grafana-foundation-sdk, which Grafana
generates from its own schema (the dashboard kind and each panel and
datasource plugin's schema) for the Grafana version in the package's
version (tests/observability/requirements.txt):

1. every object decodes into its typed model and encodes back unchanged: a
   field the schema does not know, or one put at the wrong level, is lost on
   the way and reported;
2. every field holds what its type says (enums, literals, numbers, strings,
   lists, nested models; a panel's options and field config by its plugin's
   schema, a target by the Prometheus query schema).

Then what makes these dashboards work when imported by hand: a `datasource`
variable of type prometheus that every panel, target and annotation uses;
unique panel ids and refIds; panels inside the 24-column grid, not
overlapping; template variables defined, matched with `=~` only; rate
windows `$__rate_interval`.
"""

from __future__ import annotations

import enum
import json
import re
import sys
import types
import typing
from pathlib import Path

from grafana_foundation_sdk.cog import plugins, runtime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

plugins.register_default_plugins()

DS = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's AnnotationQuery schema is open for datasource fields; these are
# the Prometheus datasource's (public/app/plugins/datasource/prometheus).
PROMETHEUS_ANNOTATION_FIELDS = {"titleFormat", "textFormat", "tagKeys", "step",
                                "useValueForTime", "seriesValueAsTimestamp"}
BUILTIN_VARS = {"__rate_interval", "__interval", "__interval_ms", "__range",
                "__range_s", "__range_ms", "__all", "__name"}
VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$([A-Za-z_]\w*)")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
RANGE_FN = re.compile(r"\b(rate|irate|increase)\s*\(")


# --- 1 and 2: the schema, through the SDK's models ------------------------------------

def encode(obj) -> object:
    return json.loads(json.dumps(obj, cls=JSONEncoder))


def diff(original, encoded, path: str, errors: list[str], open_keys: set[str] = frozenset()):
    """Reports what the model lost or changed on a round trip."""
    if isinstance(original, dict):
        if not isinstance(encoded, dict):
            errors.append(f"{path}: an object became {type(encoded).__name__}")
            return
        for key, value in original.items():
            if key not in encoded:
                if key not in open_keys:
                    errors.append(f"{path}.{key}: not in the schema")
                continue
            diff(value, encoded[key], f"{path}.{key}", errors)
    elif isinstance(original, list):
        if not isinstance(encoded, list) or len(original) != len(encoded):
            errors.append(f"{path}: a list changed on decoding")
            return
        for i, (a, b) in enumerate(zip(original, encoded)):
            diff(a, b, f"{path}[{i}]", errors)
    elif original != encoded and not (isinstance(original, (int, float))
                                      and isinstance(encoded, (int, float))
                                      and float(original) == float(encoded)):
        errors.append(f"{path}: {original!r} became {encoded!r}")


def is_model(cls) -> bool:
    return isinstance(cls, type) and hasattr(cls, "from_json") and hasattr(cls, "to_json")


def conforms(value, hint, path: str, errors: list[str]) -> bool:
    """True when value fits the type hint; nested models are checked too."""
    origin = typing.get_origin(hint)
    if hint is typing.Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None:
            return type(None) in options
        trial: list[str] = []
        for option in options:
            if option is type(None):
                continue
            scratch: list[str] = []
            if conforms(value, option, path, scratch):
                errors += scratch
                return True
            trial += scratch
        return False
    if value is None:
        return False
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is list:
        (item,) = typing.get_args(hint) or (typing.Any,)
        return isinstance(value, list) and all(
            conforms(v, item, f"{path}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        _, item = typing.get_args(hint) or (str, typing.Any)
        return isinstance(value, dict) and all(
            conforms(v, item, f"{path}.{k}", errors) for k, v in value.items())
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value in {m.value for m in hint} or isinstance(value, hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if is_model(hint):
        if isinstance(value, dict):  # some decoders keep raw dicts: decode here
            model = hint.from_json(value)
            diff(value, encode(model), path, errors)
            value = model
        if not isinstance(value, hint):
            return False
        check_model(value, path, errors)
        return True
    if isinstance(hint, type):
        if isinstance(value, runtime.UnknownDataquery):
            errors.append(f"{path}: a query of no known datasource type")
            return True
        return isinstance(value, hint)
    return True


def check_model(obj, path: str, errors: list[str]) -> None:
    for name, hint in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, name, None)
        if not conforms(value, hint, f"{path}.{name}", errors):
            errors.append(f"{path}.{name}: {value!r} is not a {hint}")
    # Panel options and field config are typed by the panel plugin.
    for name in ("options",):
        value = getattr(obj, name, None)
        if value is not None and not isinstance(value, dict) and hasattr(value, "to_json"):
            check_model(value, f"{path}.{name}", errors)
    if isinstance(obj, dm.FieldConfigSource) and obj.defaults is not None:
        custom = obj.defaults.custom
        if custom is not None and hasattr(custom, "to_json"):
            check_model(custom, f"{path}.defaults.custom", errors)


def schema_errors(data: dict) -> list[str]:
    errors: list[str] = []
    model = dm.Dashboard.from_json(data)
    encoded = encode(model)
    # Annotations: the SDK models Grafana's common fields only.
    for i, a in enumerate(data.get("annotations", {}).get("list", [])):
        extra = set(a) - set(encoded["annotations"]["list"][i])
        for key in extra - PROMETHEUS_ANNOTATION_FIELDS:
            errors.append(f"annotations.list[{i}].{key}: not in the schema")
    stripped = json.loads(json.dumps(data))
    for a in stripped.get("annotations", {}).get("list", []):
        for key in PROMETHEUS_ANNOTATION_FIELDS:
            a.pop(key, None)
    diff(stripped, encoded, "dashboard", errors)
    for i, panel in enumerate(data.get("panels", [])):
        if panel.get("type") not in ("row",) and runtime.panelcfg_config(panel.get("type", "")) is None:
            errors.append(f"panels[{i}]: panel type {panel.get('type')!r} has no schema here")
    check_model(model, "dashboard", errors)
    return errors


# --- 3: what our dashboards promise -------------------------------------------------

def walk_panels(panels: list) -> list:
    out = []
    for p in panels or []:
        out.append(p)
        out += walk_panels(p.get("panels", []))
    return out


def convention_errors(data: dict) -> list[str]:
    errors: list[str] = []
    variables = {v["name"]: v for v in data.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errors.append("templating: no `datasource` variable of type datasource, query prometheus")
    for name, v in variables.items():
        if v.get("includeAll") and v.get("allValue") != ".*":
            errors.append(f"templating.{name}: its All must be `.*`")
        if v.get("datasource") not in (None, DS):
            errors.append(f"templating.{name}: datasource must be ${{datasource}}")
    if not data.get("uid") or not data.get("title"):
        errors.append("dashboard: uid and title are required for provisioning")

    exprs: list[tuple[str, str]] = []
    ids, cells = set(), {}
    for p in walk_panels(data.get("panels", [])):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            errors.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if g.get("x", 0) < 0 or g.get("x", 0) + g.get("w", 0) > 24 or g.get("w", 0) <= 0 or g.get("h", 0) <= 0:
            errors.append(f"{where}: outside the 24-column grid: {g}")
        for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
            for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
                if (x, y) in cells:
                    errors.append(f"{where}: overlaps {cells[(x, y)]}")
                    break
                cells[(x, y)] = where
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        if p.get("datasource") != DS:
            errors.append(f"{where}: datasource must be {DS}")
        refs = [t.get("refId") for t in p.get("targets", [])]
        if not refs or len(set(refs)) != len(refs):
            errors.append(f"{where}: needs targets with unique refIds")
        for t in p.get("targets", []):
            if t.get("datasource") != DS:
                errors.append(f"{where} [{t.get('refId')}]: datasource must be {DS}")
            if not t.get("expr", "").strip():
                errors.append(f"{where} [{t.get('refId')}]: empty expr")
            exprs.append((f"{where} [{t.get('refId')}]", t.get("expr", "")))
    for a in data.get("annotations", {}).get("list", []):
        if a.get("builtIn"):
            continue
        if a.get("datasource") != DS:
            errors.append(f"annotation {a.get('name')!r}: datasource must be {DS}")
        exprs.append((f"annotation {a.get('name')!r}", a.get("expr", "")))

    for where, expr in exprs:
        bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)   # variables in strings are matchers
        for m in VAR.finditer(bare):
            name = m.group(1) or m.group(2) or m.group(3)
            if name not in BUILTIN_VARS:
                errors.append(f"{where}: ${name} outside a label matcher")
        for m in MATCHER.finditer(expr):
            for v in VAR.finditer(m.group(3)):
                name = v.group(1) or v.group(2) or v.group(3)
                if name in BUILTIN_VARS:
                    continue
                if name not in variables:
                    errors.append(f"{where}: ${name} is not a dashboard variable")
                if m.group(2) != "=~":
                    errors.append(f"{where}: ${name} must be matched with =~ (All is .*)")
        for m in RANGE_FN.finditer(expr):
            # The range of this call: the last [...] before its closing bracket.
            depth, i = 1, m.end()
            while i < len(expr) and depth:
                depth += {"(": 1, ")": -1}.get(expr[i], 0)
                i += 1
            window = re.findall(r"\[([^\]]*)\]", expr[m.end():i])
            if not window or window[-1] != "$__rate_interval":
                errors.append(f"{where}: {m.group(1)}() window must be $__rate_interval, not {window}")
    return errors


def main(argv: list[str]) -> int:
    failed = 0
    for name in argv[1:]:
        data = json.loads(Path(name).read_text(encoding="utf-8"))
        errors = schema_errors(data) + convention_errors(data)
        panels = [p for p in walk_panels(data.get("panels", [])) if p.get("type") != "row"]
        targets = sum(len(p.get("targets", [])) for p in panels)
        if errors:
            failed += 1
            print(f"{name}: {len(errors)} problem(s)", file=sys.stderr)
            for e in errors:
                print(f"  {e}", file=sys.stderr)
        else:
            print(f"{name}: valid ({len(panels)} panels, {targets} queries, "
                  f"schemaVersion {data.get('schemaVersion')})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
