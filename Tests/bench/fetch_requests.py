#!/usr/bin/env python3
"""Fetch one rollout's routes as a trainer does with Python requests, n times, and print one JSON line
with the latency percentiles: `requests.get(...).content` then `np.load` of the .npy (the array the
trainer uses); then the same with `stream=True` and `r.raw.read()`. Run by `r3 bench routes`; usable alone:

    python3 Tests/bench/fetch_requests.py --url http://127.0.0.1:8080 --key r3_... --id <rollout> -n 20
"""
import argparse
import io
import json
import time

import numpy as np
import requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("--query", default="format=npy&dtype=uint8")
    ap.add_argument("-n", type=int, default=20)
    a = ap.parse_args()
    s = requests.Session()   # keep-alive, as a trainer's client is
    s.headers["Authorization"] = f"Bearer {a.key}"
    url = f"{a.url}/v1/rollouts/{a.id}/routes?{a.query}"
    def content():          # the usual idiom: requests reads the body in 10 KiB pieces
        r = s.get(url)
        r.raise_for_status()
        return r.content

    def raw():              # stream=True and one read of the socket (the server sends no Content-Encoding)
        r = s.get(url, stream=True)
        r.raise_for_status()
        return r.raw.read()

    out = {"client": f"python requests {requests.__version__} + numpy {np.__version__}", "fetches": a.n}
    for name, get in [("", content), ("raw_read_", raw)]:
        lat = []
        for i in range(a.n + 1):
            t0 = time.perf_counter()
            body = get()
            arr = np.load(io.BytesIO(body))
            dt = time.perf_counter() - t0
            if i > 0:   # the first request opens the connection
                lat.append(dt)
        lat.sort()
        out.update({"shape": list(arr.shape), "bytes": len(body), f"{name}p50_ms": lat[len(lat) // 2] * 1000,
                    f"{name}p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
