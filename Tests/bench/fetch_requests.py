#!/usr/bin/env python3
"""Fetch one rollout's routes as a trainer does with Python requests, n times, and print one JSON line
with the latency percentiles: `requests.get(...).content` then `np.load` of the .npy (the array the
trainer uses). Run by `r3 bench routes`; usable alone:

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
    lat, shape = [], None
    for i in range(a.n + 1):
        t0 = time.perf_counter()
        r = s.get(url)
        r.raise_for_status()
        arr = np.load(io.BytesIO(r.content))
        dt = time.perf_counter() - t0
        if i > 0:   # the first request opens the connection
            lat.append(dt)
        shape = list(arr.shape)
    lat.sort()
    print(json.dumps({"client": f"python requests {requests.__version__} + numpy {np.__version__}", "fetches": a.n,
                      "shape": shape, "bytes": len(r.content), "p50_ms": lat[len(lat) // 2] * 1000,
                      "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}))


if __name__ == "__main__":
    main()
