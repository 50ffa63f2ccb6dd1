#!/usr/bin/env python3
"""Closed-loop load generator for KServe v2 ``/v2/models/chexvision/infer``.

    python3 scripts/bench_serve/loadgen.py --url http://127.0.0.1:8010 --images DIR \\
        --concurrency 8 --duration 20 [--warmup 5] [--key KEY] [--shape 1|1,1] [--form binary|json]

C connections each send one request at a time, one PNG per request (BYTES
``image`` of shape ``[1]``, or ``[1, 1]`` for Triton), cycling over the
images of DIR, for ``--duration`` seconds after ``--warmup`` seconds whose
results are dropped. Prints one JSON line: images/s, p50/p90/p99/mean/max
latency (ms), requests, errors.

Engine: ``wrk`` (Debian's package, C, epoll) when it is installed: the
request bodies are prebuilt (make_v2_body.py) and formatted once per wrk
thread, so the Lua side costs nothing per request; wrk's ``--latency``
histogram gives the percentiles. ``--engine python`` (or no wrk) uses
threads with http.client, good for a few hundred requests a second at most;
the numbers it prints say which engine measured them.

With ``--watch-pgid`` (run.sh passes the server's process group) the
result also says how much of the machine's CPU the server, the load
generator and *everything else* used during the window (``cpu_other_pct``,
100 = every core): on a shared machine a build running alongside shows up
there, and such a row is not to be trusted.

Before measuring, one probe request checks that the server answers 200 with
``findings`` [1, 14] and ``abnormal`` [1, 1] (so a wrong shape or route
fails loudly instead of benchmarking error responses).
"""

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_v2_body import MODEL_NAME, build, parse_shape  # noqa: E402

INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"

# wrk script: args are INDEX_TSV [BEARER_KEY]. Each thread formats every
# request once in init() and hands them out round-robin (threads start at
# different offsets); done() prints one JSON line prefixed with "JSON ".
WRK_LUA = r"""
local counter = 1
local threads = {}

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local reqs = {}
local n = 0
local i = 0
non200 = 0  -- global: done() reads it with thread:get

function init(args)
  local index = args[1]
  local key = args[2]
  for line in io.lines(index) do
    local hlen, ctype, path = line:match("^(%d+)\t([^\t]+)\t(.+)$")
    if hlen then
      local f = assert(io.open(path, "rb"))
      local body = f:read("*a")
      f:close()
      local headers = {}
      headers["Content-Type"] = ctype
      if tonumber(hlen) > 0 then
        headers["Inference-Header-Content-Length"] = hlen
      end
      if key and key ~= "" then
        headers["Authorization"] = "Bearer " .. key
      end
      n = n + 1
      reqs[n] = wrk.format("POST", wrk.path, headers, body)
    end
  end
  assert(n > 0, "no request bodies in " .. index)
  i = (tid or 0) % n
end

function request()
  i = i % n + 1
  return reqs[i]
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non200") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"bytes":%d,"non200":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,"min_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, latency.min))
end
"""


def http(method, url, body=None, headers=None, timeout=60):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def request_headers(hlen, ctype, key):
    h = {"Content-Type": ctype}
    if hlen > 0:
        h["Inference-Header-Content-Length"] = str(hlen)
    if key:
        h["Authorization"] = f"Bearer {key}"
    return h


def probe(url, body, hlen, ctype, key):
    status, data = http("POST", url + INFER_PATH, body, request_headers(hlen, ctype, key))
    if status != 200:
        raise SystemExit(f"probe: HTTP {status}: {data[:500]!r}")
    # The answer may itself use the binary extension; the JSON part comes first.
    doc = json.loads(data.decode("utf-8", "replace") if data[:1] == b"{" else "{}")
    outs = {o["name"]: o for o in doc.get("outputs", [])}
    for name, shape in (("findings", [1, 14]), ("abnormal", [1, 1])):
        if name not in outs or list(outs[name]["shape"]) != shape or outs[name].get("datatype") != "FP32":
            raise SystemExit(f"probe: output {name} missing or not FP32 {shape}: {data[:500]!r}")
    return outs


def run_wrk(url, index, key, concurrency, duration, threads, timeout_s, workdir):
    script = os.path.join(workdir, "v2_infer.lua")
    with open(script, "w") as f:
        f.write(WRK_LUA)
    cmd = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, int(round(duration)))}s",
           "--timeout", f"{timeout_s}s", "--latency", "-s", script, url + INFER_PATH, "--", index, key or ""]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout_s + 30)
    for line in out.stdout.splitlines():
        if line.startswith("JSON "):
            r = json.loads(line[5:])
            return {
                "requests": r["requests"], "seconds": r["duration_us"] / 1e6,
                "errors": r["non200"] + r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"],
                "non200": r["non200"], "timeouts": r["timeouts"],
                "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
                "mean_ms": r["mean_us"] / 1000, "max_ms": r["max_us"] / 1000,
            }
    raise SystemExit(f"wrk printed no result (rc {out.returncode}):\n{out.stdout}\n{out.stderr}")


def busy_ticks():
    """Busy CPU ticks of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v[:8]) - idle


def group_ticks(pgid):
    """utime + stime of the live processes of process group ``pgid``."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # after the comm: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])
    return total


def own_ticks():
    tck = os.sysconf("SC_CLK_TCK")
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime) * tck


class CpuWatch:
    """CPU used during the window: by the server's process group, by this
    load generator (wrk included), and by everything else on the machine
    (another build, say: then the numbers are not to be trusted)."""

    def __init__(self, pgid):
        self.pgid = pgid

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.b0, self.o0 = busy_ticks(), own_ticks()
        self.s0 = group_ticks(self.pgid) if self.pgid else 0
        return self

    def __exit__(self, *exc):
        tck, cores = os.sysconf("SC_CLK_TCK"), os.cpu_count()
        wall = time.perf_counter() - self.t0
        busy = busy_ticks() - self.b0
        own = own_ticks() - self.o0
        # A process of the group that exits during the window takes its
        # ticks with it: never report less than nothing.
        server = max(0, group_ticks(self.pgid) - self.s0) if self.pgid else float("nan")
        cap = wall * tck * cores / 100.0  # ticks per percent of the machine
        self.result = {
            "cpu_server_pct": round(server / cap, 1) if self.pgid else None,
            "cpu_loadgen_pct": round(own / cap, 1),
            "cpu_other_pct": round(max(0.0, busy - own - server) / cap, 1) if self.pgid else None,
            "cpu_busy_pct": round(busy / cap, 1),
        }
        return False


def percentile(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def run_python(url, bodies, key, concurrency, duration, timeout_s):
    import http.client

    parsed = urlparse(url)
    stop_at = time.perf_counter() + duration
    lat, errors, lock = [], [0], threading.Lock()

    def worker(tid):
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=timeout_s)
        i = tid
        mine, bad = [], 0
        while time.perf_counter() < stop_at:
            body, hlen, ctype = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", INFER_PATH, body=body, headers=request_headers(hlen, ctype, key))
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=timeout_s)
            t1 = time.perf_counter()
            if t1 > stop_at:
                break  # finished after the window, as wrk drops it
            if ok:
                mine.append((t1 - t0) * 1000)
            else:
                bad += 1
        with lock:
            lat.extend(mine)
            errors[0] += bad

    start = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(t,)) for t in range(concurrency)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    seconds = min(time.perf_counter() - start, duration)
    lat.sort()
    return {
        "requests": len(lat) + errors[0], "seconds": seconds, "errors": errors[0], "non200": errors[0],
        "timeouts": 0, "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
        "mean_ms": sum(lat) / len(lat) if lat else float("nan"), "max_ms": lat[-1] if lat else float("nan"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8010")
    ap.add_argument("--images", required=True, help="directory of PNGs (all *.png are used, sorted)")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--key", default="", help="bearer key (our service with api.keys)")
    ap.add_argument("--shape", default="1", help="shape of `image`: 1 ([N]) or 1,1 ([N, 1], Triton)")
    ap.add_argument("--form", choices=("binary", "json"), default="binary")
    ap.add_argument("--engine", choices=("auto", "wrk", "python"), default="auto")
    ap.add_argument("--threads", type=int, default=0, help="wrk threads (default: min(2, concurrency))")
    ap.add_argument("--timeout", type=int, default=120, help="per-request timeout, seconds")
    ap.add_argument("--label", default="", help="free text copied into the result (e.g. the server's name)")
    ap.add_argument("--watch-pgid", type=int, default=0,
                    help="the server's process group: report its CPU and everything else's during the window")
    args = ap.parse_args()

    url = args.url.rstrip("/")
    paths = sorted(glob.glob(os.path.join(args.images, "*.png")))
    if not paths:
        raise SystemExit(f"no *.png in {args.images}")
    shape = parse_shape(args.shape)
    engine = args.engine
    if engine == "auto":
        engine = "wrk" if shutil.which("wrk") else "python"
    if engine == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), or use --engine python")

    with tempfile.TemporaryDirectory(prefix="cxv-loadgen-") as workdir:
        bodies, lines = [], []
        for i, p in enumerate(paths):
            with open(p, "rb") as f:
                body, hlen, ctype = build([f.read()], shape, args.form)
            bodies.append((body, hlen, ctype))
            bp = os.path.join(workdir, f"body-{i:03d}.bin")
            with open(bp, "wb") as f:
                f.write(body)
            lines.append(f"{hlen}\t{ctype}\t{bp}\n")
        index = os.path.join(workdir, "index.tsv")
        with open(index, "w") as f:
            f.writelines(lines)

        probe(url, *bodies[0], args.key)
        threads = args.threads or max(1, min(2, args.concurrency))

        def measure(seconds):
            if engine == "wrk":
                return run_wrk(url, index, args.key, args.concurrency, seconds, threads, args.timeout, workdir)
            return run_python(url, bodies, args.key, args.concurrency, seconds, args.timeout)

        if args.warmup > 0:
            measure(args.warmup)
        with CpuWatch(args.watch_pgid) as cpu:
            r = measure(args.duration)

    ok = r["requests"] - r["errors"]
    result = {
        "label": args.label, "url": url, "engine": engine, "concurrency": args.concurrency,
        "duration_s": round(r["seconds"], 2), "images": len(paths), "form": args.form, "shape": list(shape),
        "requests": r["requests"], "errors": r["errors"], "timeouts": r["timeouts"],
        "images_per_s": round(ok / r["seconds"], 2) if r["seconds"] else 0.0,
        "p50_ms": round(r["p50_ms"], 1), "p90_ms": round(r["p90_ms"], 1), "p99_ms": round(r["p99_ms"], 1),
        "mean_ms": round(r["mean_ms"], 1), "max_ms": round(r["max_ms"], 1),
        **cpu.result, "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
