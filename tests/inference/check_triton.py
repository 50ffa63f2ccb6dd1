#!/usr/bin/env python3
"""Open Inference Protocol (KServe v2) conformance of chexvision-inference, with
NVIDIA Triton's own HTTP client (tritonclient.http).

    check_triton.py BASE_URL IMAGE_PATH [--key KEY] [--model chexvision]

BASE_URL is e.g. http://127.0.0.1:8080 (the client takes host:port without a
scheme; https:// turns TLS on). The bearer key travels in the client's
headers= argument on every call.

Checks, in order (every failure is listed; exit 1 if any):
  health       is_server_live, is_server_ready, is_model_ready(model)
  metadata     get_server_metadata (name, version, extensions);
               get_model_metadata: input image BYTES [-1], input pixels FP32
               [-1,3,S,S], outputs findings FP32 [-1,14], abnormal FP32 [-1,1]
  image/bin    image BYTES [2] (the same image twice) in the binary tensor
               extension, outputs requested binary: shapes [2,14] and [2,1],
               FP32, values in [0,1], rows identical, binary_data_size right
  image/json   the same with the outputs requested as JSON (binary_data=False):
               agrees with image/bin to 1e-6. (The image input itself stays
               binary: encoded images are not UTF-8, and tritonclient refuses
               to put non-UTF-8 BYTES in JSON.)
  image/all    no outputs requested (the client then asks binary_data_output):
               both outputs come back, binary, equal to image/bin
  pixels       pixels FP32 zeros [1,3,S,S] (S from the metadata), binary and
               as pure JSON (no binary part at all): shapes [1,14] and [1,1],
               the two agree to 1e-6
  errors       an unknown model name raises InferenceServerException (404);
               with --key, a call without it is refused (401)
"""
import argparse
import os
import sys
import time

try:
    import numpy as np
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException
except ImportError as e:  # pragma: no cover
    sys.exit("check_triton: %s (pip install -r tests/inference/requirements.txt)" % e)

N_FINDINGS = 14
TOL = 1e-6


class Checker:
    def __init__(self):
        self.failures = []
        self.step_t = {}

    def fail(self, step, msg):
        self.failures.append("%s: %s" % (step, msg))
        print("  FAIL %s" % msg)

    def ok(self, msg):
        print("  ok   %s" % msg)

    def check(self, step, cond, msg):
        if cond:
            self.ok(msg)
        else:
            self.fail(step, msg)
        return bool(cond)


def describe_exc(e):
    if isinstance(e, InferenceServerException):
        return "InferenceServerException(status=%s): %s" % (e.status(), e.message())
    return "%s: %s" % (type(e).__name__, e)


def find_tensor(meta, kind, name):
    for t in meta.get(kind) or []:
        if t.get("name") == name:
            return t
    return None


def shape_ok(shape, want):
    """want uses None for a dimension that must be -1 (variable batch)."""
    if not isinstance(shape, list) or len(shape) != len(want):
        return False
    return all((s == -1) if w is None else (s == w) for s, w in zip(shape, want))


def check_outputs(c, step, res, n, binary):
    """Shapes, dtype, range, binary/JSON form of one infer result."""
    f = res.as_numpy("findings")
    a = res.as_numpy("abnormal")
    good = c.check(step, f is not None and a is not None, "outputs findings and abnormal present")
    if not good:
        return None, None
    c.check(step, list(f.shape) == [n, N_FINDINGS], "findings shape %s == [%d, %d]" % (list(f.shape), n, N_FINDINGS))
    c.check(step, list(a.shape) == [n, 1], "abnormal shape %s == [%d, 1]" % (list(a.shape), n))
    for name in ("findings", "abnormal"):
        out = res.get_output(name) or {}
        c.check(step, out.get("datatype") == "FP32", "%s datatype %r == FP32" % (name, out.get("datatype")))
        size = (out.get("parameters") or {}).get("binary_data_size")
        if binary:
            want = n * (N_FINDINGS if name == "findings" else 1) * 4
            c.check(step, size == want and "data" not in out,
                    "%s came back binary, parameters.binary_data_size %s == %d" % (name, size, want))
        else:
            c.check(step, size is None and isinstance(out.get("data"), list),
                    "%s came back as JSON data (no binary_data_size)" % name)
    for name, arr in (("findings", f), ("abnormal", a)):
        finite = bool(np.all(np.isfinite(arr)))
        c.check(step, finite and float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0,
                "%s values in [0, 1] (min %.4g, max %.4g)" % (name, float(np.nanmin(arr)), float(np.nanmax(arr))))
    return f.astype(np.float32), a.astype(np.float32)


def timed(c, step, fn):
    t = time.monotonic()
    try:
        return fn()
    finally:
        c.step_t[step] = c.step_t.get(step, 0.0) + (time.monotonic() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base_url")
    ap.add_argument("image")
    ap.add_argument("--key", default=os.environ.get("CHEXVISION_API_KEY"),
                    help="bearer key (default: $CHEXVISION_API_KEY)")
    ap.add_argument("--model", default="chexvision")
    ap.add_argument("--timeout", type=float, default=120.0)
    a = ap.parse_args()

    base = a.base_url.rstrip("/")
    ssl = base.startswith("https://")
    url = base.split("://", 1)[1] if "://" in base else base
    auth = {"Authorization": "Bearer " + a.key} if a.key else {}

    def hdrs():
        # A fresh dict per call: tritonclient's infer() writes
        # Inference-Header-Content-Length into the dict it is given, so a
        # reused dict carries a stale length into the next (pure JSON) call.
        return dict(auth)

    with open(a.image, "rb") as f:
        image = f.read()
    c = Checker()
    t0 = time.monotonic()
    client = httpclient.InferenceServerClient(url, ssl=ssl, connection_timeout=a.timeout,
                                              network_timeout=a.timeout)
    print("tritonclient.http -> %s (image %s, %d bytes)" % (url, a.image, len(image)))

    # -- health
    print("[health]")
    try:
        c.check("health", timed(c, "health", lambda: client.is_server_live(headers=hdrs())),
                "is_server_live()")
        c.check("health", timed(c, "health", lambda: client.is_server_ready(headers=hdrs())),
                "is_server_ready()")
        ready = timed(c, "health", lambda: client.is_model_ready(a.model, headers=hdrs()))
        if not c.check("health", ready, "is_model_ready(%r)" % a.model):
            try:  # why not: the client only looks at the status code
                client.get_model_metadata(a.model, headers=hdrs())
            except Exception as e:  # noqa: BLE001
                print("       (model metadata: %s)" % describe_exc(e))
    except Exception as e:  # noqa: BLE001
        c.fail("health", "cannot talk to %s: %s" % (url, describe_exc(e)))
        print("\nFAIL: server unreachable")
        return 2

    # -- metadata
    print("[metadata]")
    S = None
    try:
        sm = timed(c, "metadata", lambda: client.get_server_metadata(headers=hdrs()))
        c.check("metadata", isinstance(sm.get("name"), str) and isinstance(sm.get("version"), str)
                and isinstance(sm.get("extensions"), list),
                "server metadata has name, version, extensions: %s" % {k: sm.get(k) for k in ("name", "version", "extensions")})
    except Exception as e:  # noqa: BLE001
        c.fail("metadata", "get_server_metadata(): %s" % describe_exc(e))
    try:
        mm = timed(c, "metadata", lambda: client.get_model_metadata(a.model, headers=hdrs()))
        c.check("metadata", mm.get("name") == a.model, "model metadata name %r == %r" % (mm.get("name"), a.model))
        c.check("metadata", isinstance(mm.get("platform"), str), "model metadata platform %r" % mm.get("platform"))
        img = find_tensor(mm, "inputs", "image")
        c.check("metadata", img is not None and img.get("datatype") == "BYTES" and shape_ok(img.get("shape"), [None]),
                "input image BYTES [-1]: %s" % img)
        pix = find_tensor(mm, "inputs", "pixels")
        if c.check("metadata", pix is not None and pix.get("datatype") == "FP32"
                   and isinstance(pix.get("shape"), list) and len(pix["shape"]) == 4
                   and pix["shape"][0] == -1 and pix["shape"][1] == 3 and pix["shape"][2] == pix["shape"][3],
                   "input pixels FP32 [-1, 3, S, S]: %s" % pix):
            S = pix["shape"][2]
            if S == -1:
                params = mm.get("parameters") or {}
                S = params.get("input_size") or params.get("S")
                print("       pixels side is -1 in the shape; parameters give %r" % S)
        fo = find_tensor(mm, "outputs", "findings")
        c.check("metadata", fo is not None and fo.get("datatype") == "FP32" and shape_ok(fo.get("shape"), [None, 14]),
                "output findings FP32 [-1, 14]: %s" % fo)
        ab = find_tensor(mm, "outputs", "abnormal")
        c.check("metadata", ab is not None and ab.get("datatype") == "FP32" and shape_ok(ab.get("shape"), [None, 1]),
                "output abnormal FP32 [-1, 1]: %s" % ab)
    except Exception as e:  # noqa: BLE001
        c.fail("metadata", "get_model_metadata(%r): %s" % (a.model, describe_exc(e)))

    def image_input():
        inp = httpclient.InferInput("image", [2], "BYTES")
        inp.set_data_from_numpy(np.array([image, image], dtype=np.object_), binary_data=True)
        return inp

    # -- image, binary outputs
    print("[image/bin] image BYTES [2], binary tensor extension both ways")
    ref = None
    try:
        outs = [httpclient.InferRequestedOutput("findings", binary_data=True),
                httpclient.InferRequestedOutput("abnormal", binary_data=True)]
        res = timed(c, "image/bin", lambda: client.infer(a.model, [image_input()], outputs=outs, headers=hdrs()))
        f, ab = check_outputs(c, "image/bin", res, 2, binary=True)
        if f is not None:
            c.check("image/bin", np.array_equal(f[0], f[1]) and np.array_equal(ab[0], ab[1]),
                    "the two rows (same image) are identical (max diff %.3g)"
                    % max(float(np.abs(f[0] - f[1]).max()), float(np.abs(ab[0] - ab[1]).max())))
            ref = (f, ab)
            print("       findings[0] = %s, abnormal[0] = %.4f" % (np.round(f[0], 4).tolist(), float(ab[0, 0])))
    except Exception as e:  # noqa: BLE001
        c.fail("image/bin", "infer: %s" % describe_exc(e))

    # -- image, JSON outputs
    print("[image/json] same request, outputs requested binary_data=False (JSON)")
    try:
        outs = [httpclient.InferRequestedOutput("findings", binary_data=False),
                httpclient.InferRequestedOutput("abnormal", binary_data=False)]
        res = timed(c, "image/json", lambda: client.infer(a.model, [image_input()], outputs=outs, headers=hdrs()))
        f, ab = check_outputs(c, "image/json", res, 2, binary=False)
        if f is not None:
            c.check("image/json", np.array_equal(f[0], f[1]), "the two rows are identical")
            if ref is not None:
                d = max(float(np.abs(f - ref[0]).max()), float(np.abs(ab - ref[1]).max()))
                c.check("image/json", d <= TOL, "JSON and binary answers agree (max diff %.3g <= %g)" % (d, TOL))
    except Exception as e:  # noqa: BLE001
        c.fail("image/json", "infer: %s" % describe_exc(e))

    # -- image, no outputs named
    print("[image/all] no outputs requested (parameters.binary_data_output = true)")
    try:
        res = timed(c, "image/all", lambda: client.infer(a.model, [image_input()], headers=hdrs()))
        f, ab = check_outputs(c, "image/all", res, 2, binary=True)
        if f is not None and ref is not None:
            d = max(float(np.abs(f - ref[0]).max()), float(np.abs(ab - ref[1]).max()))
            c.check("image/all", d <= TOL, "agrees with image/bin (max diff %.3g)" % d)
    except Exception as e:  # noqa: BLE001
        c.fail("image/all", "infer: %s" % describe_exc(e))

    # -- pixels
    if isinstance(S, int) and S > 0:
        print("[pixels] pixels FP32 zeros [1, 3, %d, %d], binary and pure JSON" % (S, S))
        zeros = np.zeros((1, 3, S, S), dtype=np.float32)
        got = {}
        for binary in (True, False):
            tag = "bin" if binary else "json"
            try:
                inp = httpclient.InferInput("pixels", [1, 3, S, S], "FP32")
                inp.set_data_from_numpy(zeros, binary_data=binary)
                outs = [httpclient.InferRequestedOutput("findings", binary_data=binary),
                        httpclient.InferRequestedOutput("abnormal", binary_data=binary)]
                res = timed(c, "pixels", lambda: client.infer(a.model, [inp], outputs=outs, headers=hdrs()))
                got[tag] = check_outputs(c, "pixels/" + tag, res, 1, binary=binary)
            except Exception as e:  # noqa: BLE001
                c.fail("pixels/" + tag, "infer: %s" % describe_exc(e))
        if got.get("bin", (None,))[0] is not None and got.get("json", (None,))[0] is not None:
            d = max(float(np.abs(got["bin"][0] - got["json"][0]).max()),
                    float(np.abs(got["bin"][1] - got["json"][1]).max()))
            c.check("pixels", d <= TOL, "JSON and binary pixels answers agree (max diff %.3g)" % d)
    else:
        print("[pixels] SKIPPED: the model metadata gives no usable pixels side S (%r)" % (S,))

    # -- errors
    print("[errors]")
    try:
        timed(c, "errors", lambda: client.infer("no-such-model-xyz", [image_input()], headers=hdrs()))
        c.fail("errors", "infer on an unknown model name did not raise")
    except InferenceServerException as e:
        c.check("errors", True, "unknown model -> %s" % describe_exc(e))
        c.check("errors", e.status() == "404", "unknown model status %s == 404" % e.status())
        if not isinstance(e.message(), str):
            print("  note: the error body's 'error' is %s, not a string as KServe v2 specifies"
                  % type(e.message()).__name__)
    except Exception as e:  # noqa: BLE001
        c.fail("errors", "unknown model raised %s, expected InferenceServerException" % describe_exc(e))
    if a.key:
        try:
            timed(c, "errors", lambda: client.get_model_metadata(a.model))
            c.fail("errors", "get_model_metadata without the key succeeded (auth is not enforced)")
        except InferenceServerException as e:
            c.check("errors", e.status() == "401", "without the key -> %s" % describe_exc(e))

    client.close()
    total = time.monotonic() - t0
    print("\ntimings: " + ", ".join("%s %.0f ms" % (k, v * 1000) for k, v in c.step_t.items())
          + "; total %.2f s" % total)
    if c.failures:
        print("FAIL: %d problem(s):" % len(c.failures))
        for m in c.failures:
            print("  - " + m)
        return 1
    print("OK: Open Inference Protocol conformance (tritonclient %s, numpy %s)"
          % (_version("tritonclient"), np.__version__))
    return 0


def _version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    sys.exit(main())
