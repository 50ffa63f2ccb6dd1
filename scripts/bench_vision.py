#!/usr/bin/env python3
"""Pillow and OpenCV timings for scripts/bench_vision.sh: decode PNG to gray,
resize to 320 px (bilinear, antialiased as Pillow does), CLAHE 2.0 8x8 at
320 px and at full size. Single thread. Prints one line the shell script
parses: `python decode X resize X clahe320 X clahefull X` in ms per image."""
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

cv2.setNumThreads(1)
files = sorted(Path(sys.argv[1]).glob("*.png"))
data = [f.read_bytes() for f in files]
n = len(data)
import io

t = time.perf_counter()
decoded = [Image.open(io.BytesIO(b)).convert("L") for b in data]
for im in decoded:
    im.load()
decode = (time.perf_counter() - t) * 1e3 / n

t = time.perf_counter()
cv_decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE) for b in data]
cv_decode = (time.perf_counter() - t) * 1e3 / n

t = time.perf_counter()
resized = [im.resize((320, 320), Image.BILINEAR) for im in decoded]
resize = (time.perf_counter() - t) * 1e3 / n

clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
small = [np.asarray(im) for im in resized]
t = time.perf_counter()
for a in small:
    clahe.apply(a)
clahe320 = (time.perf_counter() - t) * 1e3 / n

t = time.perf_counter()
for a in cv_decoded:
    clahe.apply(a)
clahefull = (time.perf_counter() - t) * 1e3 / n
print(f"python decode {decode:.3f} cvdecode {cv_decode:.3f} resize {resize:.3f} clahe320 {clahe320:.3f} clahefull {clahefull:.3f}")
