#!/usr/bin/env python3
"""Every PromQL expression of the dashboards and alert rules, as JSON lines.

    python3 scripts/observability/queries.py [--dashboards DIR] [--rules FILE ...]
    python3 scripts/observability/queries.py --metric-names
    python3 scripts/observability/queries.py --check-metrics
    python3 scripts/observability/queries.py --self-test

Each line is {"source": ..., "expr": ..., "kind": "panel" | "signal"}:

- "panel": a dashboard panel target, as Grafana would send it, with the
  variables substituted ($__rate_interval → 1m, $__interval → 15s,
  $__range → 5m, any other $var / ${var} / [[var]] → .*).
- "signal": an operand of an alert rule or of a dashboard annotation. Those
  expressions are conditions that return nothing while all is well, so
  running them proves little; their operands must return data once the
  services have run. A condition is split at top-level `and` / `or` /
  `unless`, a top-level comparison is taken apart (`x > 0.7` gives x;
  `x < on (v) group_left () y` gives x and y), and `absent(x)` /
  `absent_over_time(x[10m])` give x.

The end-to-end test runs every line as an instant query against a real
Prometheus that scraped the services through a short flow, and requires a
series from each.

--metric-names prints the metric names the expressions use; --check-metrics
fails, listing them, on names that no Rust source under services/ or shared/
registers (a typo in a dashboard or rule must not pass).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "helm" / "chexvision" / "dashboards"
RULES = ROOT / "helm" / "chexvision" / "rules"

BUILTIN_VARS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
IDENT_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:")
OPEN, CLOSE = "([{", ")]}"
SET_OPS = ("and", "or", "unless")
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
# Words that are not metric names where they stand alone.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "start", "end", "atan2"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
NUMERIC = re.compile(r"^[\s0-9.eE+\-*/()]+$|^\s*[+-]?(inf|nan)\s*$", re.IGNORECASE)


# --- variables ----------------------------------------------------------------------

VARIABLE = re.compile(
    r"\$\{(?P<braced>[A-Za-z_]\w*)(?::[^}]*)?\}"   # ${var} ${var:regex}
    r"|\[\[(?P<old>[A-Za-z_]\w*)(?::[^\]]*)?\]\]"  # [[var]]
    r"|\$(?P<plain>[A-Za-z_]\w*)")                # $var ($1 in label_replace stays)


def substitute(expr: str) -> str:
    def repl(m: re.Match) -> str:
        name = m.group("braced") or m.group("old") or m.group("plain")
        return BUILTIN_VARS.get(name, ".*")
    return VARIABLE.sub(repl, expr)


# --- a PromQL scanner that knows strings, comments and nesting ------------------------

def scan(expr: str):
    """Yields (index, char, depth) for every character outside strings and
    comments; depth counts the (, [ and { around it."""
    depth, i, n = 0, 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if (expr[j] == "\\" and c != "`") else 1
            i = j + 1
            continue
        if c == "#":
            while i < n and expr[i] != "\n":
                i += 1
            continue
        if c in CLOSE:
            depth -= 1  # a bracket pair stands at the depth around it
        yield i, c, depth
        if c in OPEN:
            depth += 1
        i += 1


def strip_comments(expr: str) -> str:
    out, i, n, quote = [], 0, len(expr), None
    while i < n:
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\" and quote != "`" and i + 1 < n:
                out.append(expr[i + 1])
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
            out.append(c)
        elif c == "#":
            while i < n and expr[i] != "\n":
                i += 1
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def matching(expr: str, start: int) -> int:
    """Index of the bracket closing the one at `start`."""
    target = None
    for i, c, depth in scan(expr):
        if i == start:
            target = depth
        elif target is not None and c in CLOSE and depth == target:
            return i
    raise ValueError(f"unbalanced brackets in {expr!r}")


def unwrap(expr: str) -> str:
    """Drops parentheses around the whole expression."""
    expr = expr.strip()
    while expr.startswith("(") and matching(expr, 0) == len(expr) - 1:
        expr = expr[1:-1].strip()
    return expr


def word_at(expr: str, i: int, word: str) -> bool:
    end = i + len(word)
    return (expr[i:end].lower() == word
            and (i == 0 or expr[i - 1] not in IDENT_CHARS)
            and (end >= len(expr) or expr[end] not in IDENT_CHARS))


def split_top(expr: str, ops: tuple[str, ...], words: bool) -> list[tuple[str, str]]:
    """Splits at top-level operators; returns (operator before, part) pairs."""
    parts, last, op_before, skip_to = [], 0, "", -1
    for i, c, depth in scan(expr):
        if i < skip_to or depth != 0:
            continue
        for op in ops:
            hit = word_at(expr, i, op) if words else expr.startswith(op, i)
            if hit:
                parts.append((op_before, expr[last:i]))
                op_before, last, skip_to = op, i + len(op), i + len(op)
                break
    parts.append((op_before, expr[last:]))
    return parts


def strip_modifiers(expr: str) -> str:
    """Drops what may follow a binary operator: bool, on/ignoring (...),
    group_left/group_right [(...)]."""
    expr = expr.strip()
    while True:
        m = re.match(r"(bool|on|ignoring|group_left|group_right)\b\s*", expr, re.IGNORECASE)
        if not m:
            return expr
        rest = expr[m.end():]
        if rest.startswith("("):
            rest = rest[matching(rest, 0) + 1:]
        elif m.group(1).lower() in ("on", "ignoring"):
            raise ValueError(f"{m.group(1)} without a label list in {expr!r}")
        expr = rest.strip()


def call_argument(expr: str, names: tuple[str, ...]) -> str | None:
    """X when expr is name(X) for one of `names`, else None."""
    m = re.match(r"(%s)\s*\(" % "|".join(names), expr)
    if not m or matching(expr, m.end() - 1) != len(expr) - 1:
        return None
    return expr[m.end():-1].strip()


def strip_range(expr: str) -> str:
    """x[10m] → x; a subquery x[1h:1m] → x."""
    expr = expr.strip()
    if expr.endswith("]"):
        for i, c, depth in scan(expr):
            if c == "[" and depth == 0 and matching(expr, i) == len(expr) - 1:
                return expr[:i].strip()
    return expr


def operands(expr: str) -> list[str]:
    """The sub-expressions of a condition that must each return data."""
    expr = unwrap(strip_comments(expr))
    parts = split_top(expr, SET_OPS, words=True)
    if len(parts) > 1:
        return [o for _, p in parts for o in operands(strip_modifiers(p))]
    sides = split_top(expr, COMPARISONS, words=False)
    if len(sides) > 1:
        out = []
        for _, side in sides:
            side = strip_modifiers(side)
            if not NUMERIC.match(side):
                out += operands(side)
        return out
    inner = call_argument(expr, ("absent",))
    if inner is not None:
        return operands(inner)
    inner = call_argument(expr, ("absent_over_time",))
    if inner is not None:
        return operands(strip_range(inner))
    return [expr]


# --- metric names -------------------------------------------------------------------

def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, labels or keywords)."""
    expr = strip_comments(expr)
    visible = {i: (c, d) for i, c, d in scan(expr)}
    names, i, n = set(), 0, len(expr)
    while i < n:
        if i not in visible:
            i += 1
            continue
        c, depth = visible[i]
        if c == "{" or c == "[":
            i = matching(expr, i) + 1   # label matchers, ranges
            continue
        if c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            while i < n and (expr[i] in IDENT_CHARS or expr[i] == "."):
                i += 1                  # 0.99, 1e3, 5m
            continue
        m = IDENT.match(expr, i) if (i == 0 or expr[i - 1] not in IDENT_CHARS) else None
        if not m:
            i += 1
            continue
        word, j = m.group(0), m.end()
        rest = expr[j:].lstrip()
        if word.lower() in LABEL_LISTS and rest.startswith("("):
            i = matching(expr, j + (len(expr[j:]) - len(rest))) + 1
            continue
        aggregation = re.match(r"(by|without)\s*\(", rest, re.IGNORECASE)  # sum by (x) (…)
        if not rest.startswith("(") and not aggregation and word.lower() not in KEYWORDS:
            names.add(word)
        i = j
    return names


def rust_metric_names(root: Path) -> set[str]:
    found = set()
    for base in ("services", "shared"):
        for path in (root / base).rglob("*.rs"):
            found |= set(re.findall(r'"(chexvision_[a-z0-9_]+)"', path.read_text(errors="replace")))
    return found


def registered(name: str, known: set[str]) -> bool:
    if name in known:
        return True
    for suffix in ("_bucket", "_sum", "_count"):  # a histogram's series
        if name.endswith(suffix) and name[: -len(suffix)] in known:
            return True
    return False


# --- sources ------------------------------------------------------------------------

def panels(items: list) -> list:
    out = []
    for p in items or []:
        out.append(p)
        out += panels(p.get("panels", []))   # collapsed rows keep theirs inside
    return out


def dashboard_lines(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    lines = []
    for p in panels(data.get("panels", [])):
        for t in p.get("targets", []) or []:
            if t.get("expr"):
                lines.append({"source": f"{path.name}: {p.get('title', '?')} [{t.get('refId', '?')}]",
                              "expr": substitute(t["expr"]), "kind": "panel"})
    for a in data.get("annotations", {}).get("list", []):
        if a.get("expr"):
            for k, o in enumerate(dict.fromkeys(operands(substitute(a["expr"])))):
                lines.append({"source": f"{path.name}: annotation {a.get('name', '?')} #{k + 1}",
                              "expr": o, "kind": "signal"})
    return lines


def rule_lines(path: Path) -> list[dict]:
    import yaml  # PyYAML: tests/observability/requirements.txt

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    lines = []
    for group in data.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" in rule:
                for k, o in enumerate(dict.fromkeys(operands(rule["expr"]))):
                    lines.append({"source": f"{path.name}: {rule['alert']} #{k + 1}",
                                  "expr": o, "kind": "signal"})
            else:  # a recording rule's expression is a query like a panel's
                lines.append({"source": f"{path.name}: {rule['record']}",
                              "expr": rule["expr"].strip(), "kind": "panel"})
    return lines


def all_lines(dashboards: Path, rules: list[Path]) -> list[dict]:
    lines = []
    for path in sorted(dashboards.glob("*.json")):
        lines += dashboard_lines(path)
    for path in rules:
        lines += rule_lines(path)
    return lines


# --- self-test ----------------------------------------------------------------------

SELF_TESTS = [
    ("x > 0.7", ["x"]),
    ("x == 0", ["x"]),
    ("sum(rate(x{outcome=\"error\"}[5m])) > 0", ["sum(rate(x{outcome=\"error\"}[5m]))"]),
    ("x < bool 0.5", ["x"]),
    ("0.5 < x", ["x"]),
    ("x >= 2e-3", ["x"]),
    ("1 - sum(a) / sum(b) > 0.05", ["1 - sum(a) / sum(b)"]),
    ("a > on (mv) group_left () max by (mv) (b)", ["a", "max by (mv) (b)"]),
    ("a < on(mv) group_left b", ["a", "b"]),
    ("a and on (x) b", ["a", "b"]),
    ("a unless ignoring (le) b", ["a", "b"]),
    ("(a or b) and c > 3", ["a", "b", "c"]),
    ("(changes(s[30m]) == 0)\n  and on (instance) (eta > 0)", ["changes(s[30m])", "eta"]),
    # Words inside strings, names and label lists are not operators.
    ('x{route=~"/a and b|c>d", k="or"} > 1', ['x{route=~"/a and b|c>d", k="or"}']),
    ("order_total > 1 and sum by (and_or) (band) > 2", ["order_total", "sum by (and_or) (band)"]),
    ("sum(x > 0)", ["sum(x > 0)"]),      # a comparison inside a call is not top level
    ("x AND y", ["x", "y"]),              # keywords are case-insensitive
    ("absent(up{job=\"x\"})", ["up{job=\"x\"}"]),
    ("absent_over_time(x{a=\"b\"}[10m])", ["x{a=\"b\"}"]),
    ("absent(x == 1)", ["x"]),
    ("count by (i) (a) unless on (i) count by (i) (b)\nor absent(b)",
     ["count by (i) (a)", "count by (i) (b)", "b"]),
    ('label_replace(x, "v", "$1", "w", "(.*)") > 0', ['label_replace(x, "v", "$1", "w", "(.*)")']),
    ("x # a comment with and > 1\n > 1", ["x"]),
    ("(((x)))", ["x"]),
    ("(a) + (b) > 1", ["(a) + (b)"]),
    ("x[5m:1m] > 0", ["x[5m:1m]"]),
]

SUBSTITUTION_TESTS = [
    ("rate(x[$__rate_interval])", "rate(x[1m])"),
    ("increase(x[$__range]) / $__interval", "increase(x[5m]) / 15s"),
    ('x{a=~"$a", b=~"${b}", c=~"${c:regex}", d=~"[[d]]"}', 'x{a=~".*", b=~".*", c=~".*", d=~".*"}'),
    ('label_replace(x, "v", "$1", "w", "(.*)")', 'label_replace(x, "v", "$1", "w", "(.*)")'),
]

METRIC_TESTS = [
    ('histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{route=~"x"}[1m])))', {"a_bucket"}),
    ('label_replace(b, "mv", "$1", "v", "(.*)") * on (instance, job) group_left (mv) c offset 5m', {"b", "c"}),
    ("1e3 * d > bool 0.5 and time() - e < 2", {"d", "e"}),
    ("count without (x) (f) or vector(0)", {"f"}),
]


def self_test() -> int:
    failures = 0
    for expr, want in SELF_TESTS:
        got = [" ".join(o.split()) for o in operands(expr)]
        want = [" ".join(w.split()) for w in want]
        if got != want:
            failures += 1
            print(f"FAIL operands({expr!r}) = {got}, want {want}", file=sys.stderr)
    for expr, want in SUBSTITUTION_TESTS:
        if substitute(expr) != want:
            failures += 1
            print(f"FAIL substitute({expr!r}) = {substitute(expr)!r}, want {want!r}", file=sys.stderr)
    for expr, want in METRIC_TESTS:
        if metric_names(expr) != want:
            failures += 1
            print(f"FAIL metric_names({expr!r}) = {metric_names(expr)}, want {want}", file=sys.stderr)
    total = len(SELF_TESTS) + len(SUBSTITUTION_TESTS) + len(METRIC_TESTS)
    print(f"queries.py self-test: {total - failures} passed, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dashboards", type=Path, default=DASHBOARDS)
    ap.add_argument("--rules", type=Path, nargs="*", default=None)
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--metric-names", action="store_true")
    ap.add_argument("--check-metrics", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    rules = args.rules if args.rules is not None else sorted(RULES.glob("*.yml"))
    lines = all_lines(args.dashboards, rules)
    if args.metric_names or args.check_metrics:
        used: dict[str, list[str]] = {}
        # Names come from the original expressions too (operands drop nothing
        # that matters, but a rule's whole condition is what Prometheus loads).
        for line in lines:
            for name in metric_names(line["expr"]):
                used.setdefault(name, []).append(line["source"])
        for path in rules:
            import yaml
            for group in yaml.safe_load(path.read_text(encoding="utf-8")).get("groups", []):
                for rule in group.get("rules", []):
                    for name in metric_names(rule["expr"]):
                        used.setdefault(name, []).append(f"{path.name}: {rule.get('alert') or rule.get('record')}")
        if args.metric_names:
            print("\n".join(sorted(used)))
            return 0
        known = rust_metric_names(ROOT)
        missing = {n: s for n, s in used.items() if not registered(n, known)}
        if missing:
            print(f"{len(missing)} metric name(s) used by dashboards or rules are registered "
                  "by no Rust source under services/ or shared/:", file=sys.stderr)
            for name in sorted(missing):
                where = sorted(set(missing[name]))
                print(f"  {name}  (used in {len(where)}: {where[0]}{' …' if len(where) > 1 else ''})",
                      file=sys.stderr)
            return 1
        print(f"all {len(used)} metric names used are registered in the Rust sources", file=sys.stderr)
        return 0
    for line in lines:
        print(json.dumps(line, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
