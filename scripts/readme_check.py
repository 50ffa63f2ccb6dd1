#!/usr/bin/env python3
"""Every command in README.md is run by a test or by CI (`make readme-check`).

    python3 scripts/readme_check.py               # check, then run the `run: true` commands
    python3 scripts/readme_check.py --static      # check only: nothing is run
    python3 scripts/readme_check.py --self-test   # plant faults in copies; each must be caught

The commands are the lines of README.md's ```sh, ```bash and ```console
blocks: backslash continuations joined, comment lines and trailing
comments dropped; in a console block only lines starting with `$ ` are
commands (the rest is output). Each must match exactly one entry of
tests/readme/commands.yaml, by its text with whitespace collapsed. An entry
is either

    - command: chexvision registry list
      run: true                  # run here, for real (below); must exit 0
      env: {NAME: value}         # optional, for this command only
      server: keyed              # optional: CHEXVISION_URL is the keyed server

or

    - command: make test
      covered_by:                # a test or CI file that runs it
        - file: .ci/run
          contains: ["make test"]

A `covered_by` file must exist and contain every listed string, so a test
renamed or a flag changed on one side only fails here. An entry no README
command matches any more is stale and fails too, as does a relative link
in README.md to a file (or a heading anchor) that does not exist.

`run: true` commands run in README order, each in `bash -c` with `set -a`
and `pipefail`, in a scratch folder (with a `configs` link to the
repository's): the environment a command leaves (exports, `VAR=$(...)`) is
the next one's. `chexvision` and the service binaries come from the folder
of `$CHEXVISION_BIN` (default target/ci/chexvision). Inherited
`CHEXVISION_*` variables are dropped; the checker sets
`CHEXVISION_STORE=file://<scratch>/chexvision-data`, `CHEXVISION_BUS=memory://`,
`CHEXVISION_URL` (a served demo model), `CHEXVISION_API_KEY`, and writes
`chest.dcm` (a DICOM made from a synthetic PNG). When a command needs the
API, it first starts

    chexvision --store file://<tmp>/store --bus memory:// demo --rows 200 --epochs 1 --bind 127.0.0.1:<port> --quiet

and waits for `GET /readyz` (300 s at most); entries with `server: keyed`
get a second server on the same store with an API key file (the checker
first proves that server refuses a request without the key). Both are
stopped (their process groups) and the scratch folder removed at the end.

Each command may take README_CHECK_COMMAND_TIMEOUT_S seconds (default
900: a dev build trains far slower than the ci profile's). Exit status 0
when everything passed; otherwise the problems are listed.
Python 3 standard library and PyYAML only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MANIFEST = ROOT / "tests" / "readme" / "commands.yaml"
COMMAND_LANGS = {"sh", "bash", "console"}
# Per command (a dev build trains far slower than the ci profile's);
# the demo's readiness has its own limit.
COMMAND_TIMEOUT_S = int(os.environ.get("README_CHECK_COMMAND_TIMEOUT_S", "900"))
READY_TIMEOUT_S = 300
# Folders of the repository the commands read by relative path.
LINKED = ("configs",)


# --------------------------------------------------------------------------
# Extraction


@dataclass
class Command:
    text: str  # as run: continuations joined, trailing comment dropped
    line: int  # 1-based line in the README where it starts
    lang: str

    @property
    def key(self) -> str:
        return normalise(self.text)


def normalise(text: str) -> str:
    return " ".join(text.split())


def strip_comment(line: str) -> str:
    """Drops a trailing shell comment: a `#` outside quotes at the start of
    a word. `$#`, `${#x}`, `a#b` and quoted `#` are kept."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 2
                continue
            if c == quote:
                quote = None
        elif c == "\\":
            i += 2
            continue
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t;|&("):
            return line[:i].rstrip()
        i += 1
    return line.rstrip()


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")


def extract(text: str) -> tuple[list[Command], list[str]]:
    """The commands of the sh/bash/console blocks, and problems (an
    unclosed block, a continuation at the end of a block)."""
    commands: list[Command] = []
    problems: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        start = i
        body: list[tuple[int, str]] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence[0] * len(fence)):
            raw = lines[i]
            if raw.startswith(indent):
                raw = raw[len(indent):]
            body.append((i + 1, raw))
            i += 1
        if i >= len(lines):
            problems.append(f"README.md:{start + 1}: the ``` block is never closed")
            break
        i += 1
        if lang in COMMAND_LANGS:
            commands += block_commands(body, lang, problems)
    return commands, problems


def block_commands(body: list[tuple[int, str]], lang: str, problems: list[str]) -> list[Command]:
    out: list[Command] = []
    j = 0
    while j < len(body):
        number, raw = body[j]
        j += 1
        line = raw.strip()
        if lang == "console":
            if not line.startswith("$ "):
                continue  # output
            line = line[2:].strip()
        if not line or line.startswith("#"):
            continue
        parts = []
        while True:
            code = strip_comment(line)
            if code.endswith("\\") and not code.endswith("\\\\"):
                parts.append(code[:-1].rstrip())
                if j >= len(body):
                    problems.append(f"README.md:{number}: a continuation `\\` ends the block")
                    break
                line = body[j][1].strip()
                if lang == "console" and line.startswith("> "):
                    line = line[2:]
                j += 1
                continue
            parts.append(code)
            break
        text = " ".join(p for p in parts if p)
        if text:
            out.append(Command(text, number, lang))
    return out


# --------------------------------------------------------------------------
# Links


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation
    other than `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def link_problems(readme: Path, root: Path) -> list[str]:
    problems = []
    text = readme.read_text(encoding="utf-8")
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for m in LINK.finditer(line):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("//"):
                continue  # http(s), mailto, ...
            path_part, _, anchor = target.partition("#")
            path = readme if not path_part else (root / path_part)
            if not path.exists():
                problems.append(f"README.md:{number}: link to {path_part}: no such file")
                continue
            if anchor and path.suffix == ".md" and anchor not in anchors(path):
                problems.append(f"README.md:{number}: link to {target}: no heading with that anchor")
    return problems


# --------------------------------------------------------------------------
# The manifest


@dataclass
class Entry:
    command: str
    run: bool = False
    covered_by: list[dict] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    server: str | None = None

    @property
    def key(self) -> str:
        return normalise(self.command)


def load_manifest(path: Path) -> tuple[list[Entry], list[str]]:
    problems = []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        return [], [f"{path.name} is not valid YAML: {e}"]
    entries = []
    for n, raw in enumerate(data.get("commands") or [], 1):
        where = f"{path.name} entry {n}"
        if not isinstance(raw, dict) or not isinstance(raw.get("command"), str):
            problems.append(f"{where}: needs a `command` string")
            continue
        unknown = set(raw) - {"command", "run", "covered_by", "env", "server", "note"}
        if unknown:
            problems.append(f"{where} ({raw['command']!r}): unknown keys {sorted(unknown)}")
        entry = Entry(
            command=raw["command"],
            run=raw.get("run") is True,
            covered_by=raw.get("covered_by") or [],
            env={k: str(v) for k, v in (raw.get("env") or {}).items()},
            server=raw.get("server"),
        )
        if entry.run == bool(entry.covered_by):
            problems.append(f"{where} ({entry.command!r}): needs exactly one of `run: true` and `covered_by`")
        if entry.server not in (None, "keyed"):
            problems.append(f"{where} ({entry.command!r}): server must be `keyed` or absent")
        entries.append(entry)
    return entries, problems


def coverage_problems(entry: Entry, root: Path) -> list[str]:
    problems = []
    for cover in entry.covered_by:
        if not isinstance(cover, dict) or "file" not in cover or not cover.get("contains"):
            problems.append(f"{entry.command!r}: a covered_by item needs `file` and a non-empty `contains`")
            continue
        path = root / cover["file"]
        if not path.is_file():
            problems.append(f"{entry.command!r}: covered_by {cover['file']}: no such file")
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in cover["contains"]:
            if needle not in text:
                problems.append(f"{entry.command!r}: {cover['file']} does not contain {needle!r}")
    return problems


@dataclass
class Plan:
    commands: list[Command]
    entries: list[Entry]
    matched: dict[str, Entry]  # command key -> entry
    problems: list[str]


def check(readme: Path, manifest: Path, root: Path) -> Plan:
    commands, problems = extract(readme.read_text(encoding="utf-8"))
    entries, manifest_problems = load_manifest(manifest)
    problems += manifest_problems
    by_key: dict[str, list[Entry]] = {}
    for e in entries:
        by_key.setdefault(e.key, []).append(e)
    matched: dict[str, Entry] = {}
    for c in commands:
        found = by_key.get(c.key, [])
        if not found:
            problems.append(f"README.md:{c.line}: no manifest entry for: {c.key}")
        elif len(found) > 1:
            problems.append(f"README.md:{c.line}: {len(found)} manifest entries match: {c.key}")
        else:
            matched[c.key] = found[0]
    keys = {c.key for c in commands}
    for e in entries:
        if e.key not in keys:
            problems.append(f"stale manifest entry (no README command matches it): {e.key}")
        problems += coverage_problems(e, root)
    problems += link_problems(readme, root)
    return Plan(commands, entries, matched, problems)


# --------------------------------------------------------------------------
# Test files: a PNG decoder (8-bit gray, as `chexvision synth` writes) and a
# DICOM writer (explicit VR little endian, MONOCHROME2, PA chest)


def png_gray8(data: bytes) -> tuple[int, int, bytes]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    i, idat, width, height = 8, b"", 0, 0
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + n]
        i += 12 + n
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, colour, interlace) != (8, 0, 0):
                raise ValueError("not an 8-bit gray non-interlaced PNG")
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    out, prev, p = bytearray(), bytearray(width), 0
    for _ in range(height):
        kind, row = raw[p], bytearray(raw[p + 1:p + 1 + width])
        p += 1 + width
        for x in range(width):
            a = row[x - 1] if x else 0
            b = prev[x]
            c = prev[x - 1] if x else 0
            if kind == 1:
                row[x] = (row[x] + a) & 255
            elif kind == 2:
                row[x] = (row[x] + b) & 255
            elif kind == 3:
                row[x] = (row[x] + (a + b) // 2) & 255
            elif kind == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                row[x] = (row[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += row
        prev = row
    return width, height, bytes(out)


def dicom_from_gray8(width: int, height: int, pixels: bytes) -> bytes:
    def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0" if vr in (b"UI", b"OB") else b" "
        head = struct.pack("<HH", group, elem) + vr
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
            return head + b"\0\0" + struct.pack("<I", len(value)) + value
        return head + struct.pack("<H", len(value)) + value

    us = lambda v: struct.pack("<H", v)  # noqa: E731
    out = b"\0" * 128 + b"DICM"
    out += element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1")
    out += element(0x0008, 0x0060, b"CS", b"DX")
    out += element(0x0018, 0x0015, b"CS", b"CHEST")
    out += element(0x0018, 0x5101, b"CS", b"PA")
    out += element(0x0028, 0x0002, b"US", us(1))
    out += element(0x0028, 0x0004, b"CS", b"MONOCHROME2")
    out += element(0x0028, 0x0010, b"US", us(height))
    out += element(0x0028, 0x0011, b"US", us(width))
    for elem, value in ((0x0100, 8), (0x0101, 8), (0x0102, 7), (0x0103, 0)):
        out += element(0x0028, elem, b"US", us(value))
    out += element(0x7FE0, 0x0010, b"OB", pixels)
    return out


# --------------------------------------------------------------------------
# Running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, data: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_binary(path: Path, patience_s: float = 120) -> None:
    """The binaries may be rebuilt while this runs: wait for one that is
    briefly missing."""
    deadline = time.monotonic() + patience_s
    while not (path.is_file() and os.access(path, os.X_OK)):
        if time.monotonic() > deadline:
            raise SystemExit(f"readme-check: {path} is not there (build it, or set CHEXVISION_BIN)")
        time.sleep(2)


class Server:
    def __init__(self, name: str, argv: list[str], env: dict, log: Path, url: str):
        self.name, self.log, self.url = name, log, url
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{tail(self.log)}")
            if http_status(f"{self.url}/readyz") == 200:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready within {timeout_s:.0f} s:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()


def run_commands(plan: Plan, chexvision: Path, verbose: bool, keep: bool, quiet: bool = False) -> list[str]:
    """Runs the `run: true` commands in README order; the problems."""
    order: list[tuple[Command, Entry]] = []
    seen = set()
    for c in plan.commands:
        e = plan.matched.get(c.key)
        if e and e.run and c.key not in seen:
            seen.add(c.key)
            order.append((c, e))
    if not order:
        return []
    wait_for_binary(chexvision)
    bin_dir = chexvision.parent
    scratch = Path(tempfile.mkdtemp(prefix="readme-check-"))
    servers: list[Server] = []
    problems: list[str] = []
    try:
        for name in LINKED:
            (scratch / name).symlink_to(ROOT / name)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("CHEXVISION_")}
        base_env["PATH"] = f"{bin_dir}{os.pathsep}{base_env.get('PATH', '')}"
        base_env["CHEXVISION_LOG__LEVEL"] = "warn"

        # A file the README assumes the reader has: a DICOM (made from a
        # synthetic PNG; the README makes its PNG itself).
        work = scratch / ".readme-check"
        work.mkdir()
        png = b""
        if any("chest.dcm" in c.text or e.server for c, e in order):
            samples = work / "samples"
            subprocess.run([str(chexvision), "synth", "--rows", "1", "--size", "256", "--seed", "3",
                            "--quiet", "--out", str(samples)], env=base_env, check=True,
                           stdout=subprocess.DEVNULL, cwd=scratch)
            png = next((samples / "images").glob("*.png")).read_bytes()
            (scratch / "chest.dcm").write_bytes(dicom_from_gray8(*png_gray8(png)))

        env = dict(base_env)
        env["CHEXVISION_STORE"] = f"file://{scratch}/chexvision-data"
        env["CHEXVISION_BUS"] = "memory://"
        api_key = "readme-" + secrets.token_hex(8)
        env["CHEXVISION_API_KEY"] = api_key
        keyed_url = None
        if any(c.text.find("CHEXVISION_URL") >= 0 for c, _ in order):
            wait_for_binary(chexvision)
            store = work / "store"
            port = free_port()
            demo = Server(
                "the demo",
                [str(chexvision), "--store", f"file://{store}", "--bus", "memory://", "demo",
                 "--rows", "200", "--epochs", "1", "--bind", f"127.0.0.1:{port}", "--quiet"],
                base_env, work / "demo.log", f"http://127.0.0.1:{port}",
            )
            servers.append(demo)
            started = time.monotonic()
            demo.wait_ready(READY_TIMEOUT_S)
            print(f"readme-check: the demo serves on {demo.url} "
                  f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
            env["CHEXVISION_URL"] = demo.url
            if any(e.server == "keyed" for _, e in order):
                keys = work / "keys.yaml"
                digest = hashlib.sha256(api_key.encode()).hexdigest()
                keys.write_text(f"- {{name: readme, scope: predict, sha256: {digest}}}\n")
                kport = free_port()
                keyed_env = dict(base_env)
                keyed_env["CHEXVISION_SERVICE__API__KEYS_FILE"] = str(keys)
                keyed_env["CHEXVISION_HTTP__BIND"] = "127.0.0.1:0"
                keyed = Server(
                    "the keyed server",
                    [str(chexvision), "--store", f"file://{store}", "--bus", "memory://", "serve",
                     "--config", str(ROOT / "configs" / "inference.yaml"),
                     "--bind", f"127.0.0.1:{kport}"],
                    keyed_env, work / "keyed.log", f"http://127.0.0.1:{kport}",
                )
                servers.append(keyed)
                keyed.wait_ready(60)
                status = http_status(f"{keyed.url}/v1/predict", png, {"Content-Type": "image/png"})
                if status != 401:
                    problems.append(f"the keyed server answered {status}, not 401, without a key")
                keyed_url = keyed.url

        env_out = work / "env"
        for n, (command, entry) in enumerate(order, 1):
            cmd_env = dict(env)
            cmd_env.update(entry.env)
            if entry.server == "keyed":
                cmd_env["CHEXVISION_URL"] = keyed_url or ""
            cmd_env["__README_ENV_OUT"] = str(env_out)
            env_out.unlink(missing_ok=True)
            script = (f"set -a -o pipefail\n{command.text}\n__rc=$?\n"
                      f"env -0 > \"$__README_ENV_OUT\"\nexit $__rc\n")
            started = time.monotonic()
            try:
                result = subprocess.run(
                    ["bash", "--noprofile", "--norc", "-c", script], cwd=scratch, env=cmd_env,
                    stdin=subprocess.DEVNULL, capture_output=True, timeout=COMMAND_TIMEOUT_S,
                )
                rc, output = result.returncode, (result.stdout + result.stderr).decode("utf-8", "replace")
            except subprocess.TimeoutExpired as e:
                rc = "timeout"
                output = ((e.stdout or b"") + (e.stderr or b"")).decode("utf-8", "replace")
            took = time.monotonic() - started
            if not quiet:
                print(f"readme-check: [{n}/{len(order)}] {'ok' if rc == 0 else 'FAILED'} "
                      f"{took:5.1f} s  {shorten(command.key)}", file=sys.stderr)
            if verbose and output.strip():
                print(indent(output), file=sys.stderr)
            if rc != 0:
                problems.append(f"README.md:{command.line}: exited {rc}: {command.key}\n"
                                + indent("\n".join(output.splitlines()[-30:])))
                break  # later commands build on this one
            if env_out.is_file() and not entry.env and entry.server is None:
                env = read_env(env_out, env)
    except (RuntimeError, subprocess.CalledProcessError, StopIteration, ValueError) as e:
        problems.append(f"setting up the run: {e}")
    finally:
        for server in reversed(servers):
            server.stop()
        if keep:
            print(f"readme-check: scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return problems


def read_env(path: Path, previous: dict) -> dict:
    out = {}
    for item in path.read_bytes().split(b"\0"):
        if b"=" not in item:
            continue
        k, _, v = item.decode("utf-8", "replace").partition("=")
        if k in ("_", "SHLVL", "PWD", "OLDPWD", "__README_ENV_OUT", "BASH_EXECUTION_STRING"):
            continue
        out[k] = v
    # A command that failed to write it leaves the environment as it was.
    return out or previous


def shorten(text: str, width: int = 110) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# --------------------------------------------------------------------------
# Self-test


def self_test() -> int:
    failures = []

    def expect(name: str, ok: bool, detail: object = "") -> None:
        if not ok:
            failures.append(f"{name}: {detail}")

    # Extraction.
    sample = "\n".join([
        "text",
        "```sh",
        "# a comment",
        "chexvision synth --rows 2 \\",
        "  --out samples   # trailing comment",
        "echo 'a # b' \"c#d\" $# x#y",
        "```",
        "```console",
        "$ make demo",
        "output line",
        "$ chexvision registry list | grep -o 'x\\.[0-9]\\{12\\}'",
        "```",
        "```yaml",
        "not: a command",
        "```",
        "   ```bash",
        "   indented --block",
        "   ```",
    ])
    got = [c.text for c in extract(sample)[0]]
    want = ["chexvision synth --rows 2 --out samples", "echo 'a # b' \"c#d\" $# x#y", "make demo",
            "chexvision registry list | grep -o 'x\\.[0-9]\\{12\\}'", "indented --block"]
    expect("extraction", got == want, got)
    expect("unclosed block", extract("```sh\necho\n")[1] != [], "not reported")
    expect("slug", slug("The demo and the retraining loop (2026-12-07)")
           == "the-demo-and-the-retraining-loop-2026-12-07", slug("The demo and the retraining loop (2026-12-07)"))
    expect("slug with code", slug("`POST /v1/feedback`") == "post-v1feedback", slug("`POST /v1/feedback`"))

    # The real README and manifest pass the static checks; each planted
    # fault in a copy of them is caught.
    base = check(README, MANIFEST, ROOT)
    expect("the README and manifest as they are", not base.problems, base.problems)
    manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
    readme_text = README.read_text(encoding="utf-8")
    covered = next(e for e in manifest["commands"] if e.get("covered_by"))

    def planted(name: str, readme: str, entries: list, needle: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            r, m = Path(tmp) / "README.md", Path(tmp) / "commands.yaml"
            r.write_text(readme, encoding="utf-8")
            m.write_text(yaml.safe_dump({"commands": entries}, sort_keys=False), encoding="utf-8")
            problems = check(r, m, ROOT).problems
            expect(name, any(needle in p for p in problems), problems or "no problem reported")

    planted("a README command without an entry",
            readme_text + "\n```sh\nchexvision registry list --not-in-the-manifest\n```\n",
            manifest["commands"], "no manifest entry for: chexvision registry list --not-in-the-manifest")
    planted("a console command without an entry",
            readme_text + "\n```console\n$ chexvision topics create --planted\nnot a command\n```\n",
            manifest["commands"], "no manifest entry for: chexvision topics create --planted")
    absent = "__readme_check_planted_absent__"
    changed = [dict(e, covered_by=[dict(c, contains=list(c["contains"]) + [absent]) for c in e["covered_by"]])
               if e is covered else e for e in manifest["commands"]]
    planted("a contains string absent from its file", readme_text, changed, f"does not contain {absent!r}")
    moved = [dict(e, covered_by=[dict(c, file=c["file"] + ".gone") for c in e["covered_by"]])
             if e is covered else e for e in manifest["commands"]]
    planted("a covered_by file that does not exist", readme_text, moved, "no such file")
    planted("a stale entry", readme_text,
            manifest["commands"] + [{"command": "chexvision planted --stale", "run": True}],
            "stale manifest entry (no README command matches it): chexvision planted --stale")
    planted("two entries for one command", readme_text,
            manifest["commands"] + [dict(covered)], "2 manifest entries match")
    planted("an entry neither run nor covered", readme_text,
            [dict(e, run=True) if e is covered else e for e in manifest["commands"]],
            "needs exactly one of `run: true` and `covered_by`")
    planted("a broken relative link", readme_text + "\n[gone](docs/no-such-file.md)\n",
            manifest["commands"], "docs/no-such-file.md: no such file")
    planted("a broken anchor", readme_text + "\n[gone](docs/operations.md#no-such-heading)\n",
            manifest["commands"], "no heading with that anchor")

    # The runner: the environment a command leaves is the next one's (set
    # -a exports plain assignments), a trailing comment is no problem, and a
    # failing command, or any failing stage of a pipeline, fails the run.
    # No binary is needed for these.
    def runner(name: str, text: str, fails: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            r, m = Path(tmp) / "README.md", Path(tmp) / "commands.yaml"
            r.write_text(text)
            m.write_text(yaml.safe_dump({"commands": [{"command": c.text, "run": True}
                                                      for c in extract(text)[0]]}))
            plan = check(r, m, ROOT)
            problems = plan.problems or run_commands(plan, Path(sys.executable), verbose=False,
                                                     keep=False, quiet=True)
            ok = any("exited 1" in p for p in problems) if fails else not problems
            expect(name, ok, problems or "no problem reported")

    env = "```sh\nexport READ_ME_A=1\nREAD_ME_B=$READ_ME_A$READ_ME_A   # set -a exports it\n" \
          "test \"$READ_ME_B\" = 11\necho x | grep -q x\n"
    runner("runner: the environment carries over", env + "```\n", fails=False)
    runner("runner: a failing command is reported", env + "test -f no-such-file\n```\n", fails=True)
    runner("runner: a failing pipeline stage is reported", env + "false | true\n```\n", fails=True)

    # The test files.
    rows = b"".join(b"\x02" + bytes((x * 7 + y) % 256 for x in range(5)) for y in range(3))
    ihdr = struct.pack(">IIBBBBB", 5, 3, 8, 0, 0, 0, 0)
    chunk = lambda k, d: struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))  # noqa: E731
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    w, h, pixels = png_gray8(png)
    # Filter 2 (up) on every row: a pixel is the sum of the bytes above it.
    acc, want_pixels = [0] * 5, bytearray()
    for y in range(3):
        acc = [(acc[x] + (x * 7 + y) % 256) & 255 for x in range(5)]
        want_pixels += bytes(acc)
    expect("PNG decoder", (w, h, pixels) == (5, 3, bytes(want_pixels)), (w, h, pixels))
    dicom = dicom_from_gray8(w, h, pixels)
    expect("DICOM writer", dicom[128:132] == b"DICM" and pixels in dicom[-len(pixels) - 1:], len(dicom))

    for f in failures:
        print(f"readme-check self-test FAILED: {f}", file=sys.stderr)
    if failures:
        return 1
    print("readme-check self-test: every planted fault was caught", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--static", action="store_true", help="check only; run nothing")
    parser.add_argument("--self-test", action="store_true", help="plant faults; each must be caught")
    parser.add_argument("--verbose", action="store_true", help="print every command's output")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    started = time.monotonic()
    plan = check(args.readme, args.manifest, ROOT)
    problems = list(plan.problems)
    if not problems and not args.static:
        chexvision = Path(os.environ.get("CHEXVISION_BIN") or ROOT / "target" / "ci" / "chexvision")
        if not chexvision.is_absolute():
            chexvision = ROOT / chexvision
        problems += run_commands(plan, chexvision, args.verbose, args.keep)
    used = {id(e): e for e in plan.matched.values()}.values()
    runs = sum(1 for e in used if e.run)
    covered = sum(1 for e in used if e.covered_by)
    for p in problems:
        print(f"readme-check: {p}", file=sys.stderr)
    print(f"readme-check: {runs + covered} commands, {runs} run, {covered} covered"
          f"{' (not run: --static)' if args.static else ''}; "
          f"{len(problems)} problem(s), {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
