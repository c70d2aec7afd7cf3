"""The service's log: JSON lines on stderr. One line per request (id, method, path template, status, bytes,
duration, project), lines for job transitions, webhook attempts, refused requests and every 500 with its
cause, start-up settings; and no key, webhook secret or password in any line."""
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import requests

from jobs_client import create_model, session, submit, wait
from receiver import Receiver
from test_webhooks import hook, until


def psql(s, sql):
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    cmd = [str(bindir / "psql"), f"host={s.data_dir / 'pg' / 'run'} port=5432 dbname=r3 user=r3", "-v", "ON_ERROR_STOP=1", "-c", sql]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def test_request_log_has_its_fields_and_no_secret(private_server):
    s = private_server(R3_WEBHOOK_ALLOW_PRIVATE="1", R3_LOG_LEVEL="info")
    s.start()
    api = session(s.url, s.keys["a"])
    rec = Receiver().start()
    try:
        w = hook(api, rec.url, ["job.succeeded"])
        m = create_model(api, "logged")
        job = submit(api, {"type": "sft", "model": m["id"], "task": "sort", "steps": 2, "batch_size": 4})
        assert wait(api, job["id"])["state"] == "succeeded"
        until(lambda: rec.requests)
        # a request id is echoed when it is sane, replaced when not
        r = requests.get(s.url + "/livez", headers={"X-Request-Id": "trace-42"})
        assert r.headers["X-Request-Id"] == "trace-42"
        r = requests.get(s.url + "/livez", headers={"X-Request-Id": "has spaces and \"quotes\""})
        generated = r.headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{8,}", generated), generated
        assert requests.get(s.url + "/livez").headers["X-Request-Id"] not in (generated, "trace-42")
        bogus = "r3_thisIsNotAKeyButLooksSecret0123456789"
        assert requests.get(s.url + "/v1/rollouts", headers={"Authorization": "Bearer " + bogus}).status_code == 401
        ro = api.post(s.url + "/v1/rollouts", json={"model": "free-form", "token_ids": [1, 2, 3], "prompt_length": 1, "num_experts": 8,
                                                    "routed_experts": [[[0, 1]], [[2, 3]]]}).json()
        assert api.get(s.url + f"/v1/rollouts/{ro['id']}/routes", params={"format": "npy"}).status_code == 200
        # a request the server refuses itself (no Host)
        c = socket.create_connection(("127.0.0.1", s.port))
        c.sendall(b"GET /livez?token=abc HTTP/1.1\r\n\r\n")
        assert c.recv(4096).startswith(b"HTTP/1.1 400 ")
        c.close()
        # a 500: stored routes that fail their integrity check
        psql(s, f"UPDATE routes SET checksum = checksum + 1 WHERE rollout_id = '{ro['id']}'")
        broken = api.get(s.url + f"/v1/rollouts/{ro['id']}/routes", params={"format": "npy"}, headers={"X-Request-Id": "broken-1"})
        assert broken.status_code == 500 and broken.headers["X-Request-Id"] == "broken-1"
    finally:
        rec.stop()
    s.stop()

    text = s.log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]   # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    reqs = [line for line in lines if line["msg"] == "request"]
    for line in reqs:
        assert {"request_id", "method", "route", "status", "bytes_in", "duration_ms"} <= set(line), line
    by_id = {line["request_id"]: line for line in reqs}
    assert by_id["trace-42"]["route"] == "/livez" and by_id["trace-42"]["status"] == 200 and by_id["trace-42"]["bytes_out"] == 15
    assert by_id[generated]["route"] == "/livez"
    fetch = [line for line in reqs if line["route"] == "/v1/rollouts/{id}/routes" and line["status"] == 200]
    assert fetch and fetch[0]["project"] >= 1 and "key_id" in fetch[0] and fetch[0]["bytes_out"] > 128
    upload = [line for line in reqs if line["route"] == "/v1/rollouts" and line["method"] == "POST"]
    assert upload and upload[0]["status"] == 201 and upload[0]["bytes_in"] > 50
    assert any(line["status"] == 401 and "project" not in line for line in reqs)
    assert not any(ro["id"] in line["route"] for line in reqs), "routes are logged as templates"
    # the 500 has its cause, under the same request id
    errors = [line for line in lines if line["msg"] == "internal error"]
    assert errors and errors[0]["request_id"] == "broken-1" and "integrity check" in errors[0]["cause"]
    assert by_id["broken-1"]["status"] == 500
    # job transitions and the webhook attempt
    states = [line["state"] for line in lines if line["msg"] == "job" and line["job_id"] == job["id"]]
    assert states == ["running", "succeeded"], states
    hooks = [line for line in lines if line["msg"] == "webhook attempt" and line["webhook_id"] == w["id"]]
    assert hooks and hooks[0]["outcome"] == "delivered" and hooks[0]["status"] == 204 and hooks[0]["host"] == "127.0.0.1"
    refused = [line for line in lines if line["msg"] == "refused"]
    assert refused and refused[0]["status"] == 400 and "Host" in refused[0]["detail"]
    settings = [line for line in lines if line["msg"] == "settings"]
    assert settings and settings[0]["log_level"] == "info" and settings[0]["max_uploads_per_project"] == 4
    assert [line["msg"] for line in lines if line["logger"] == "r3"][-1] == "stopped"
    # no secret anywhere
    for secret in [s.keys["a"], s.keys["a"][3:], bogus, w["secret"], w["secret"].removeprefix("whsec_"), "token=abc", rec.url]:
        assert secret not in text, f"the log holds {secret[:8]}…"


def test_a_bad_log_level_is_one_line(tmp_path):
    from conftest import R3
    p = subprocess.run([R3, "serve"], env=dict(os.environ, R3_LOG_LEVEL="loud", R3_DATA_DIR=str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "R3_LOG_LEVEL='loud'" in p.stderr, p.stderr
