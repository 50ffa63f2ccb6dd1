#!/usr/bin/env python3
"""PyTriton peer of chexvision-inference: a real Triton server (HTTP, KServe
v2) in front of the PyTorch twin, with Triton's dynamic batcher.

    LD_LIBRARY_PATH=/root/.pyenv/versions/3.11.7/lib \\
    python3 scripts/bench_serve/serve_pytriton.py --checkpoint PATH --port 8010 --max-batch 16 --max-wait-ms 5

Model ``chexvision``: input ``image`` BYTES (encoded PNG/JPEG), outputs
``findings`` FP32 [N, 14] and ``abnormal`` FP32 [N, 1], probabilities.
Triton also answers ``/v2/health/ready``, ``/v2/models/chexvision`` etc.

``image`` is declared with dims ``[]`` (one scalar BYTES element per batch
item, ``--image-dims scalar``, the default), so a request's ``image`` has
shape ``[N]`` exactly as our service's contract says. ``--image-dims 1``
declares ``[1]`` instead (requests then send shape ``[N, 1]``), Triton's
usual spelling, in case a Triton build refuses empty dims.

Ports: HTTP ``--port``, gRPC ``--port + 1``, metrics ``--port + 2``.

The Python backend stub that Triton starts embeds libpython; with pyenv's
Python it must find *that* Python's ``libpython3.X.so`` (not Debian's, which
``ldd`` picks by default), so run.sh exports ``LD_LIBRARY_PATH`` to
``sysconfig.get_config_var("LIBDIR")``; this script adds it to its own
environment too before Triton starts (the stub inherits it).
"""

import argparse
import logging
import os
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_model import MODEL_NAME, NUM_FINDINGS, PeerModel  # noqa: E402


def ensure_libpython_on_path():
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and os.path.isdir(libdir):
        parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
        if libdir not in parts:
            os.environ["LD_LIBRARY_PATH"] = ":".join([libdir] + parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--port", type=int, default=8010)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--decode-threads", type=int, default=os.cpu_count(),
                    help="threads decoding/preprocessing the images of one batch")
    ap.add_argument("--instances", type=int, default=1, help="model instances (infer callables)")
    ap.add_argument("--http-threads", type=int, default=8)
    ap.add_argument("--image-dims", choices=("scalar", "1"), default="scalar")
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument("--no-libpython-fix", action="store_true",
                    help="leave LD_LIBRARY_PATH alone (to reproduce the stub's libpython problem)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    log = logging.getLogger("serve_pytriton")

    if not args.no_libpython_fix:
        ensure_libpython_on_path()
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    model = PeerModel(args.checkpoint, threads=args.threads)
    model.warmup((1, args.max_batch))
    pool = ThreadPoolExecutor(max_workers=max(1, args.decode_threads))
    log.info("model loaded: input %d px, torch threads %d", model.size, args.threads)

    def make_infer():
        @batch
        def infer(image):
            blobs = [np.asarray(v).reshape(-1)[0] for v in image]  # (N,) or (N, 1) of bytes
            x = np.stack(list(pool.map(model.preprocess, blobs)))
            findings, abnormal = model.forward(x)
            return {"findings": findings.astype(np.float32), "abnormal": abnormal.astype(np.float32)}

        return infer

    image_shape = () if args.image_dims == "scalar" else (1,)
    config = TritonConfig(
        http_port=args.port, grpc_port=args.port + 1, metrics_port=args.port + 2,
        http_address="127.0.0.1", grpc_address="127.0.0.1",
        http_thread_count=args.http_threads, log_verbose=args.log_verbose,
        allow_gpu_metrics=False, exit_timeout_secs=5,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=[make_infer() for _ in range(args.instances)],
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=image_shape)],
            outputs=[
                Tensor(name="findings", dtype=np.float32, shape=(NUM_FINDINGS,)),
                Tensor(name="abnormal", dtype=np.float32, shape=(1,)),
            ],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(args.max_wait_ms * 1000)),
            ),
            strict=True,
        )
        log.info("serving %s on http://127.0.0.1:%d (max batch %d, max wait %.1f ms, %d instance(s)) at %s",
                 MODEL_NAME, args.port, args.max_batch, args.max_wait_ms, args.instances, time.strftime("%X"))
        triton.serve()


if __name__ == "__main__":
    main()
