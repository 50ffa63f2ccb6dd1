#!/usr/bin/env python3
"""Prebuilt KServe v2 infer request bodies for the load generator.

    python3 scripts/bench_serve/make_v2_body.py OUTDIR IMAGE.png [IMAGE.png ...] [--shape 1|1,1] [--form binary|json]

One body per image, ``OUTDIR/body-NNN.bin``, and ``OUTDIR/index.tsv`` with
one line per body: ``HEADER_LENGTH<TAB>CONTENT_TYPE<TAB>PATH``; the JSON
summary printed on stdout repeats the header lengths.

``--form binary`` (default): the binary tensor extension, as Triton's
clients send it: the JSON header

    {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                 "parameters": {"binary_data_size": 4 + len(png)}}],
     "outputs": [{"name": "findings", "parameters": {"binary_data": false}},
                 {"name": "abnormal", "parameters": {"binary_data": false}}]}

followed by the tensor's bytes: each BYTES element as a 4-byte
little-endian length and the element's bytes. The request must carry
``Inference-Header-Content-Length: HEADER_LENGTH`` and
``Content-Type: application/octet-stream``. Outputs come back as JSON.

``--form json``: plain v2 JSON, the PNG base64-encoded as the one string
element of ``data`` (what our service and the LitServe peer accept for
BYTES in JSON; Triton takes JSON BYTES elements as raw UTF-8 strings, so
this form is not for Triton). HEADER_LENGTH is then 0: send no
``Inference-Header-Content-Length``.

``--shape``: the shape of ``image``: ``1`` (our contract, ``[N]``) or
``1,1`` (``[N, 1]``, what Triton needs when ``image`` is declared with dims
``[1]``; Triton refuses empty dims, see serve_pytriton.py).
"""

import argparse
import base64
import json
import os
import struct

MODEL_NAME = "chexvision"
OUTPUTS = ("findings", "abnormal")


def binary_body(images, shape):
    """(body, header_length) for BYTES ``image`` with the binary extension."""
    tensor = b"".join(struct.pack("<I", len(b)) + b for b in images)
    header = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": list(shape),
                    "parameters": {"binary_data_size": len(tensor)}}],
        "outputs": [{"name": o, "parameters": {"binary_data": False}} for o in OUTPUTS],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + tensor, len(head)


def json_body(images, shape):
    body = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": list(shape),
                    "data": [base64.b64encode(b).decode("ascii") for b in images]}],
        "outputs": [{"name": o} for o in OUTPUTS],
    }
    return json.dumps(body, separators=(",", ":")).encode(), 0


def build(images, shape=(1,), form="binary"):
    """(body, header_length, content_type)."""
    if form == "binary":
        body, hlen = binary_body(images, shape)
        return body, hlen, "application/octet-stream"
    body, hlen = json_body(images, shape)
    return body, hlen, "application/json"


def parse_shape(text):
    return tuple(int(x) for x in text.split(","))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--shape", default="1", help="shape of `image` for one image: 1 or 1,1")
    ap.add_argument("--form", choices=("binary", "json"), default="binary")
    args = ap.parse_args()
    shape = parse_shape(args.shape)
    if shape[0] != 1:
        raise SystemExit("one image per request: the first dimension must be 1")
    os.makedirs(args.outdir, exist_ok=True)
    lines, summary = [], []
    for i, path in enumerate(args.images):
        with open(path, "rb") as f:
            png = f.read()
        body, hlen, ctype = build([png], shape, args.form)
        out = os.path.abspath(os.path.join(args.outdir, f"body-{i:03d}.bin"))
        with open(out, "wb") as f:
            f.write(body)
        lines.append(f"{hlen}\t{ctype}\t{out}\n")
        summary.append({"image": path, "body": out, "bytes": len(body), "header_length": hlen})
    with open(os.path.join(args.outdir, "index.tsv"), "w") as f:
        f.writelines(lines)
    print(json.dumps({"index": os.path.abspath(os.path.join(args.outdir, "index.tsv")), "form": args.form,
                      "shape": list(shape), "bodies": summary}))


if __name__ == "__main__":
    main()
