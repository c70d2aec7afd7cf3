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


def status_mb(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


def rss_mb(pid):
    return status_mb(pid, "VmRSS")


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


def baseline(s, sess, rid, routes):
    """The server's pid, its RSS, the key's header line and the routes path, after as many fetches at once
    as handler threads, so that what every handler and pooled database connection keeps (libpq's buffers,
    malloc's arenas) is counted before a measurement."""
    warm = [threading.Thread(target=served, args=(sess, s.url, rid, routes)) for _ in range(8)]
    for t in warm:
        t.start()
    for t in warm:
        t.join()
    return s.proc.pid, rss_mb(s.proc.pid), "Authorization: Bearer " + s.keys["a"], f"/v1/rollouts/{rid}/routes"


def peak_rss(pid, seconds=2):
    return max(rss_mb(pid) for _ in range(int(seconds / 0.2)) if time.sleep(0.2) is None)


def test_pipelined_unread_and_a_slow_reader_pushing_bytes_grow_rss_under_64_mb(big):
    """The issue's two cases: 12 pipelined int64 fetches (105 MB each) never read, on one connection; a JSON
    fetch read 1 KB at a time while its client pushes pipelined requests as fast as the server takes them."""
    s, sess, rid, routes = big
    pid, before, auth, path = baseline(s, sess, rid, routes)
    hog = raw_request(s.port, "".join(f"GET {path}?format=raw&dtype=int64 HTTP/1.1\nHost: x\n{auth}\n\n" for _ in range(12)))
    slow = raw_request(s.port, f"GET {path}?format=json HTTP/1.1\nHost: x\n{auth}\n\n")
    stop = threading.Event()
    pushed = [0]

    def read_slowly():
        while not stop.is_set():
            if not slow.recv(1024):
                break
            time.sleep(0.05)

    def push():
        junk = "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 4096
        slow.settimeout(0.5)
        try:
            while not stop.is_set():
                pushed[0] += slow.send(junk)
        except (socket.timeout, OSError):
            pass   # the server stopped reading: the kernel's buffers are full
    threads = [threading.Thread(target=read_slowly), threading.Thread(target=push)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        served(sess, s.url, rid, routes)
        peak = peak_rss(pid)
        print(f"RSS {before:.0f} MB -> peak {peak:.0f} MB; {pushed[0] / 2**20:.1f} MB pushed behind the slow read")
        assert pushed[0] < 32 * 2**20, f"the server took {pushed[0] / 2**20:.0f} MB of pipelined bytes behind a response"
        assert peak - before < 64, f"RSS grew {peak - before:.0f} MB (before {before:.0f} MB)"
    finally:
        stop.set()
        hog.close()
        slow.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join()
        slow.close()
    served(sess, s.url, rid, routes)


def test_many_unread_and_slow_read_responses_each_hold_their_packed_routes_only(big):
    """8 connections x 4 pipelined unread int64 fetches and 4 slow JSON readers: each open response keeps
    its rollout's packed routes (one byte per id) and a 256 KiB piece, never its 105 MB body."""
    s, sess, rid, routes = big
    pid, before, auth, path = baseline(s, sess, rid, routes)
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
        peak = peak_rss(pid)
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


def test_forty_claimed_512_mib_bodies_grow_virtual_size_under_256_mb(big):
    """Heads claiming 512 MiB (the buffered limit) for a routes upload, with and without a key, then nothing:
    the buffer grows as bytes arrive, never from the claim."""
    s, sess, rid, routes = big
    pid = s.proc.pid
    before = status_mb(pid, "VmSize")
    heads = []
    for i in range(40):
        auth = f"Authorization: Bearer {s.keys['a']}\n" if i % 2 == 0 else ""
        heads.append(raw_request(s.port, f"PUT /v1/rollouts/{rid}/routes?num_experts={E} HTTP/1.1\nHost: x\n{auth}"
                                         f"Content-Type: application/x-npy\nContent-Length: {512 * 2**20}\n\n", b"\x93NUMPY"))
    try:
        time.sleep(2)
        assert sess.get(s.url + f"/v1/rollouts/{rid}", timeout=60).status_code == 200
        grown = status_mb(pid, "VmSize") - before
        print(f"VmSize {before:.0f} MB -> +{grown:.0f} MB with 40 claimed 512 MiB bodies")
        assert grown < 256, f"virtual size grew {grown:.0f} MB"
        refused = 0
        for i, c in enumerate(heads):
            if i % 2 == 1:
                got = head_of(c)
                assert got.startswith(b"HTTP/1.1 401 "), got[:200]
                refused += 1
        assert refused == 20
    finally:
        for c in heads:
            c.close()


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
