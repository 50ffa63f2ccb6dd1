#!/usr/bin/env python3
"""LitServe peer of chexvision-inference: the PyTorch twin behind LitServe's
batching (``max_batch_size`` / ``batch_timeout``), answering KServe v2.

    python3 scripts/bench_serve/serve_litserve.py --checkpoint PATH --port 8020 --max-batch 16 --max-wait-ms 5

LitServe's own route handler reads every body as JSON (or a form), so the
v2 protocol is a LitServe *spec* (``KServeV2Spec``, the mechanism its
OpenAI specs use): the spec registers the routes and reads the raw body
itself, which is what lets it take the binary tensor extension. Routes:

* ``POST /v2/models/chexvision/infer`` (and ``.../versions/{v}/infer``):
  input ``image`` BYTES, shape ``[N]`` or ``[N, 1]``, either
  - the binary tensor extension (``Inference-Header-Content-Length``: JSON
    header, then each element as a 4-byte little-endian length + bytes), or
  - plain JSON with each element a base64 string in ``data``;
  outputs ``findings`` FP32 [N, 14] and ``abnormal`` FP32 [N, 1] as JSON,
  or binary when the request asks (``binary_data`` per output or
  ``binary_data_output``), as Triton does;
* ``GET /v2/health/ready`` (LitServe's health check, moved there: 200 once
  the inference worker has loaded the model), ``/v2/health/live``, ``/v2``,
  ``/v2/models/chexvision``, ``/v2/models/chexvision/ready``.

Work split (as LitServe is meant to be used): the API process (uvicorn)
parses the request and queues the raw PNG bytes; the inference worker
process collects a batch of requests, decodes + preprocesses the batch's
images on a small thread pool (``--decode-threads``), runs the forward pass
and hands each request its rows back. Errors: 400 malformed request, 422 an
image that does not decode (only that request fails), JSON ``{"error": ...}``
as Triton answers.
"""

import argparse
import asyncio
import base64
import json
import os
import struct
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_model import MODEL_NAME, NUM_FINDINGS  # noqa: E402

import litserve as ls  # noqa: E402
from fastapi import Request, Response  # noqa: E402
from litserve.specs.base import LitSpec  # noqa: E402
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus  # noqa: E402

INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
HEADER_LENGTH = "inference-header-content-length"


class V2Error(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status, message):
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


def parse_bytes_tensor(raw, count):
    """Elements of a BYTES tensor in the binary form: u32 LE length + bytes."""
    out, pos = [], 0
    mv = memoryview(raw)
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise V2Error(400, "BYTES tensor: truncated element length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise V2Error(400, "BYTES tensor: element longer than the data")
        out.append(bytes(mv[pos:pos + n]))
        pos += n
    if len(out) != count:
        raise V2Error(400, f"BYTES tensor: {len(out)} elements, shape says {count}")
    return out


def parse_infer_request(body, header_length):
    """(images, request JSON) of a v2 infer request."""
    if header_length is not None:
        try:
            hl = int(header_length)
        except ValueError:
            raise V2Error(400, "Inference-Header-Content-Length is not a number") from None
        if not 0 < hl <= len(body):
            raise V2Error(400, "Inference-Header-Content-Length out of range")
        head, binary = body[:hl], body[hl:]
    else:
        head, binary = body, b""
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as e:
        raise V2Error(400, f"request JSON: {e}") from None
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error(400, "request has no inputs")
    images, offset = None, 0
    for inp in inputs:
        params = inp.get("parameters") or {}
        size = params.get("binary_data_size")
        raw = None
        if size is not None:
            raw = binary[offset:offset + int(size)]
            if len(raw) != int(size):
                raise V2Error(400, f"input {inp.get('name')}: binary data shorter than binary_data_size")
            offset += int(size)
        if inp.get("name") != "image":
            raise V2Error(400, f"unknown input {inp.get('name')!r}: this model takes `image` (BYTES)")
        if inp.get("datatype") != "BYTES":
            raise V2Error(400, "input `image` must be BYTES")
        shape = inp.get("shape") or []
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise V2Error(400, f"input `image` has shape {shape}; expected [N] or [N, 1]")
        count = int(shape[0])
        if raw is not None:
            images = parse_bytes_tensor(raw, count)
        else:
            data = inp.get("data")
            if isinstance(data, list) and data and isinstance(data[0], list):
                data = [x for row in data for x in row]
            if not isinstance(data, list) or len(data) != count:
                raise V2Error(400, "input `image`: `data` must hold N base64 strings")
            try:
                images = [base64.b64decode(s, validate=True) for s in data]
            except (ValueError, TypeError):
                raise V2Error(400, "input `image`: JSON BYTES elements must be base64") from None
    if not images:
        raise V2Error(400, "input `image` is empty")
    return images, doc


def encode_infer_response(doc, findings, abnormal, request_id):
    """(body, headers) as Triton answers: JSON, or JSON + binary outputs."""
    wanted = doc.get("outputs")
    names = [o.get("name") for o in wanted] if wanted else ["findings", "abnormal"]
    binary_all = bool((doc.get("parameters") or {}).get("binary_data_output"))
    per = {o.get("name"): (o.get("parameters") or {}).get("binary_data") for o in (wanted or [])}
    arrays = {"findings": findings, "abnormal": abnormal}
    outputs, blobs = [], []
    for name in names:
        if name not in arrays:
            raise V2Error(400, f"unknown output {name!r}")
        a = np.ascontiguousarray(arrays[name], dtype="<f4")
        entry = {"name": name, "datatype": "FP32", "shape": list(a.shape)}
        if per.get(name, binary_all):
            blob = a.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = a.reshape(-1).tolist()
        outputs.append(entry)
    out = {"model_name": MODEL_NAME, "model_version": "1", "outputs": outputs}
    if request_id is not None:
        out["id"] = request_id
    head = json.dumps(out, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream",
                                    "inference-header-content-length": str(len(head))}


class KServeV2Spec(LitSpec):
    def __init__(self, input_size):
        super().__init__()
        self.api_path = INFER_PATH
        self.input_size = input_size
        self._workers_status = None

    def pre_setup(self, lit_api):
        self.add_endpoint(INFER_PATH, self.infer, ["POST"])
        self.add_endpoint(f"/v2/models/{MODEL_NAME}/versions/{{version}}/infer", self.infer, ["POST"])
        self.add_endpoint("/v2/health/live", self.live, ["GET"])
        self.add_endpoint("/v2", self.server_metadata, ["GET"])
        self.add_endpoint(f"/v2/models/{MODEL_NAME}", self.model_metadata, ["GET"])
        self.add_endpoint(f"/v2/models/{MODEL_NAME}/ready", self.model_ready, ["GET"])

    def setup(self, server):
        super().setup(server)
        self._workers_status = server.workers_setup_status  # a manager dict: survives pickling

    # The worker side: payloads are lists of encoded images.
    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    # The API side.
    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def model_ready(self, request: Request) -> Response:
        status = self._workers_status
        ready = bool(status) and all(v == WorkerSetupStatus.READY for v in status.values())
        return Response(status_code=200 if ready else 503)

    async def server_metadata(self, request: Request) -> Response:
        return Response(json.dumps({"name": "litserve", "version": ls.__version__, "extensions": ["binary_tensor_data"]}),
                        media_type="application/json")

    async def model_metadata(self, request: Request) -> Response:
        return Response(json.dumps({
            "name": MODEL_NAME, "versions": ["1"], "platform": "pytorch_litserve",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "findings", "datatype": "FP32", "shape": [-1, NUM_FINDINGS]},
                        {"name": "abnormal", "datatype": "FP32", "shape": [-1, 1]}],
        }), media_type="application/json")

    async def infer(self, request: Request) -> Response:
        body = await request.body()
        if not body:
            return _error(400, "empty body")
        try:
            images, doc = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
        except V2Error as e:
            return _error(e.status, e.message)
        uid = uuid.uuid4()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(event=event)
        self.request_queue.put_nowait((self.response_queue_id, uid, time.monotonic(), images))
        await event.wait()
        response, status = self.response_buffer.pop(uid).response
        if status == LitAPIStatus.ERROR:
            return _error(500, f"inference failed: {response!r}"[:500])
        if "error" in response:
            code, message = response["error"]
            return _error(code, message)
        try:
            out, headers = encode_infer_response(doc, response["findings"], response["abnormal"], doc.get("id"))
        except V2Error as e:
            return _error(e.status, e.message)
        return Response(out, headers=headers)


class ChexVisionAPI(ls.LitAPI):
    def __init__(self, checkpoint, threads, decode_threads, **kw):
        super().__init__(**kw)
        self.checkpoint = checkpoint
        self.threads = threads
        self.decode_threads = decode_threads

    def setup(self, device):
        from peer_model import PeerModel

        self.model = PeerModel(self.checkpoint, threads=self.threads)
        self.model.warmup((1, self.max_batch_size))
        self.pool = ThreadPoolExecutor(max_workers=max(1, self.decode_threads))

    def _prep(self, blob):
        try:
            return self.model.preprocess(blob)
        except Exception as e:  # noqa: BLE001  an undecodable image fails its request only
            return e

    def batch(self, inputs):
        sizes = [len(x) for x in inputs]
        flat = [b for x in inputs for b in x]
        prepared = list(self.pool.map(self._prep, flat))
        return {"sizes": sizes, "prepared": prepared}

    def predict(self, batch):
        if isinstance(batch, list):
            # max_batch_size 1: LitServe's unbatched loop calls neither
            # batch() nor unbatch(); do both here.
            return self.unbatch(self.predict(self.batch([batch])))[0]
        prepared = batch["prepared"]
        good = [p for p in prepared if not isinstance(p, Exception)]
        findings = abnormal = None
        if good:
            findings, abnormal = self.model.forward(np.stack(good))
        return {"sizes": batch["sizes"], "prepared": prepared, "findings": findings, "abnormal": abnormal}

    def unbatch(self, out):
        results, pos, row = [], 0, 0
        for n in out["sizes"]:
            items = out["prepared"][pos:pos + n]
            pos += n
            bad = [p for p in items if isinstance(p, Exception)]
            if bad:
                row += n - len(bad)
                results.append({"error": (422, f"undecodable image: {bad[0]}")})
                continue
            results.append({"findings": out["findings"][row:row + n], "abnormal": out["abnormal"][row:row + n]})
            row += n
        return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--port", type=int, default=8020)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (worker)")
    ap.add_argument("--decode-threads", type=int, default=os.cpu_count())
    ap.add_argument("--workers", type=int, default=1, help="inference worker processes")
    ap.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ transport instead of mp queues")
    ap.add_argument("--timeout", type=float, default=120, help="seconds a request may wait in LitServe's queue")
    args = ap.parse_args()

    from peer_model import read_checkpoint

    meta, _ = read_checkpoint(args.checkpoint, verify_digest=False)
    api = ChexVisionAPI(
        os.path.abspath(args.checkpoint), args.threads, args.decode_threads,
        max_batch_size=args.max_batch, batch_timeout=args.max_wait_ms / 1000.0,
        spec=KServeV2Spec(meta["input_size"]),
    )
    server = ls.LitServer(
        api, accelerator="cpu", devices=1, workers_per_device=args.workers, timeout=args.timeout,
        healthcheck_path="/v2/health/ready", fast_queue=args.fast_queue, max_payload_size=64 * 1024 * 1024,
    )
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
