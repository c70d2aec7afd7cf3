"""Hostile clients on real sockets against a live `r3 serve`: responses nobody reads, readers that take a byte
at a time, uploads that claim a gigabyte and stall, Expect: 100-continue without a key. The server's memory
stays bounded (measured from /proc), and an ordinary client is served the whole time."""
import io
import socket
import threading
import time

import numpy as np
import pytest
import requests

T, L, K, E = 32768, 48, 8, 128


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def raw_request(port, text, body=b""):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(text.replace("\n", "\r\n").encode() + body)
    return s


@pytest.fixture(scope="module")
def big(private_server_module):
    s = private_server_module
    sess = requests.Session()
    sess.headers["Authorization"] = "Bearer " + s.keys["a"]
    r = sess.post(s.url + "/v1/rollouts", json={"model": "hostile", "token_ids": list(range(T)), "prompt_length": 16})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    rng = np.random.default_rng(0)
    routes = np.argsort(rng.random((T, L, E), dtype=np.float32), axis=2)[:, :, :K].astype(np.uint8)
    buf = io.BytesIO(); np.save(buf, routes)
    r = sess.put(s.url + f"/v1/rollouts/{rid}/routes", params={"num_experts": E}, data=buf.getvalue(),
                 headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200, r.text
    return s, sess, rid, routes


def served(sess, url, rid, routes):
    """An ordinary client: its fetch completes and is right."""
    r = sess.get(url + f"/v1/rollouts/{rid}/routes", params={"format": "npy", "dtype": "uint8"}, timeout=60)
    assert r.status_code == 200
    assert np.array_equal(np.load(io.BytesIO(r.content)), routes)


def test_unread_and_slow_read_responses_hold_bounded_memory(big):
    s, sess, rid, routes = big
    # warm up: as many fetches at once as handler threads, so that what every handler and pooled database
    # connection keeps (libpq's buffers, malloc's arenas) is in `before`
    warm = [threading.Thread(target=served, args=(sess, s.url, rid, routes)) for _ in range(8)]
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    pid = s.proc.pid
    before = rss_mb(pid)
    auth = "Authorization: Bearer " + s.keys["a"]
    path = f"/v1/rollouts/{rid}/routes"
    # 8 clients pipeline 4 int64 fetches (105 MB each) and read nothing
    hogs = [raw_request(s.port, "".join(f"GET {path}?format=raw&dtype=int64 HTTP/1.1\nHost: x\n{auth}\n\n" for _ in range(4)))
            for _ in range(8)]
    # 4 clients read JSON lists 1 KB at a time
    stop = threading.Event()

    def trickle():
        c = raw_request(s.port, f"GET {path}?format=json HTTP/1.1\nHost: x\n{auth}\n\n")
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        while not stop.is_set():
            if not c.recv(1024):
                break
            time.sleep(0.05)
        c.close()
    readers = [threading.Thread(target=trickle) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        time.sleep(3)
        served(sess, s.url, rid, routes)
        peak = max(rss_mb(pid) for _ in range(10) if time.sleep(0.2) is None)
        packed = T * L * K / 2**20   # what each response keeps: the stored routes, one byte per id
        # whole bodies would be 12 x 105 MB (int64) + 4 x ~100 MB (JSON); streamed, each holds its packed routes
        print(f"RSS {before:.0f} MB -> peak {peak:.0f} MB with 12 unread and 4 slow responses")
        assert peak - before < 12 * packed + 64, f"RSS grew {peak - before:.0f} MB (before {before:.0f} MB)"
    finally:
        stop.set()
        for h in hogs:
            h.close()
        for t in readers:
            t.join()
    served(sess, s.url, rid, routes)


def head_of(c, timeout=10):
    c.settimeout(timeout)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = c.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_stalled_gigabyte_uploads_do_not_starve_other_clients(big):
    """40 uploads that claim 1 GiB and stall: the project's first 4 hold upload threads (apart from the
    handlers of everything else), the other 36 get 429 at once; an Expect: 100-continue upload over the
    limit is refused without being invited; ordinary requests are served meanwhile."""
    s, sess, rid, routes = big
    pid = s.proc.pid
    before = rss_mb(pid)
    auth = "Authorization: Bearer " + s.keys["a"]
    head = (f"POST /v1/rollouts HTTP/1.1\nHost: x\n{auth}\nContent-Type: application/json\n"
            f"Content-Length: {2**30}\n\n")
    stalled = [raw_request(s.port, head, b'{"model": "stall", "token_ids": [1, 2') for _ in range(40)]
    try:
        time.sleep(2)
        served(sess, s.url, rid, routes)
        assert sess.get(s.url + f"/v1/rollouts/{rid}", timeout=60).status_code == 200
        refused = 0
        for c in stalled:
            c.setblocking(False)
            try:
                got = c.recv(4096)
            except BlockingIOError:
                continue
            assert got.startswith(b"HTTP/1.1 429 ") and b"Retry-After: 5" in got, got[:300]
            refused += 1
        assert refused == 36
        c = raw_request(s.port, head.replace("\n\n", "\nExpect: 100-continue\n\n"))
        got = head_of(c)
        c.close()
        assert got.startswith(b"HTTP/1.1 429 ") and b"100 Continue" not in got, got[:300]
        assert rss_mb(pid) - before < 256
    finally:
        for c in stalled:
            c.close()
    # the stalled uploads' threads are free again: an upload goes through
    deadline = time.time() + 30
    while True:
        r = sess.post(s.url + "/v1/rollouts", json={"model": "after", "token_ids": [1, 2, 3], "prompt_length": 1})
        if r.status_code != 429 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 201, r.text


def test_expect_continue_without_a_key_is_refused_before_the_body(big):
    s, sess, rid, routes = big
    c = raw_request(s.port, f"POST /v1/rollouts HTTP/1.1\nHost: x\nContent-Type: application/json\n"
                            f"Content-Length: {2**30}\nExpect: 100-continue\n\n")
    got = head_of(c)
    c.close()
    assert got.startswith(b"HTTP/1.1 401 "), got[:200]
    assert b"100 Continue" not in got


def test_expect_continue_is_answered_when_the_upload_is_taken(big):
    """curl's way: a body over 1 MiB waits for 100 Continue, which comes once the handler reads."""
    s, sess, rid, routes = big
    doc = b'{"model": "continue", "token_ids": [1, 2, 3], "prompt_length": 1}'
    c = raw_request(s.port, f"POST /v1/rollouts HTTP/1.1\nHost: x\nAuthorization: Bearer {s.keys['a']}\n"
                            f"Content-Type: application/json\nContent-Length: {len(doc)}\nExpect: 100-continue\n\n")
    got = head_of(c)
    assert got.startswith(b"HTTP/1.1 100 Continue\r\n"), got[:200]
    c.sendall(doc)
    rest = got.split(b"\r\n\r\n", 1)[1]
    c.settimeout(10)
    while b"\r\n\r\n" not in rest:
        rest += c.recv(4096)
    c.close()
    assert rest.startswith(b"HTTP/1.1 201 "), rest[:300]
