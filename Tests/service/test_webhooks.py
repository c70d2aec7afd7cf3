"""Collapse detection and Standard Webhooks through HTTP: every delivery's signature is checked with the
`standardwebhooks` reference library, against real receivers on loopback."""
import json
import time

import pytest
from standardwebhooks.webhooks import Webhook

from jobs_client import create_model, events, session, submit, wait
from receiver import Receiver

ALL = ["job.succeeded", "job.failed", "job.cancelled", "job.collapsed", "training.collapse_detected"]


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def hook(api, url, evs=ALL, **extra):
    r = api.post(api.base + "/v1/webhooks", json={"url": url, "events": evs, "description": "test", **extra})
    assert r.status_code == 201, r.text
    assert r.json()["secret"].startswith("whsec_") and r.headers["Location"] == "/v1/webhooks/" + r.json()["id"]
    return r.json()


def verified(secret, req):
    """The payload, after the reference library checked the signature (it raises otherwise)."""
    return Webhook(secret).verify(req["body"], req["headers"])


def deliveries(api, wid):
    r = api.get(api.base + f"/v1/webhooks/{wid}/deliveries")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def until(pred, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def quick_job(api, model, **extra):
    return submit(api, {"type": "sft", "model": model, "task": "sort", "steps": 2, "batch_size": 4, **extra})


def test_webhook_endpoints_crud_and_validation(api, server):
    w = hook(api, "http://127.0.0.1:9/a", ["job.succeeded"])
    got = api.get(api.base + "/v1/webhooks/" + w["id"]).json()
    assert "secret" not in got and got["events"] == ["job.succeeded"] and got["enabled"] is True
    assert w["id"] in [x["id"] for x in api.get(api.base + "/v1/webhooks").json()["data"]]
    r = api.patch(api.base + "/v1/webhooks/" + w["id"], json={"events": ["job.failed", "job.cancelled"], "enabled": False})
    assert r.status_code == 200 and r.json()["events"] == ["job.failed", "job.cancelled"] and r.json()["enabled"] is False
    for body in [{"url": "not a url", "events": ["job.succeeded"]}, {"url": "ftp://example.com/x", "events": ["job.succeeded"]},
                 {"url": "http://u:p@127.0.0.1/", "events": ["job.succeeded"]}, {"url": "http://127.0.0.1/", "events": ["job.exploded"]},
                 {"url": "http://127.0.0.1/", "events": []}, {"url": "http://127.0.0.1/"}, {"url": "http://127.0.0.1/", "events": ["job.failed"], "x": 1}]:
        r = api.post(api.base + "/v1/webhooks", json=body)
        assert r.status_code == 422 and r.headers["Content-Type"] == "application/problem+json", (body, r.text)
    assert session(server.url, server.keys["b"]).get(server.url + "/v1/webhooks/" + w["id"]).status_code == 404
    assert api.delete(api.base + "/v1/webhooks/" + w["id"]).status_code == 204
    assert api.get(api.base + "/v1/webhooks/" + w["id"]).status_code == 404


def test_job_events_are_delivered_signed_and_thin(api, receiver):
    m = create_model(api, "wh-events")
    w = hook(api, receiver.url)
    ok = wait(api, quick_job(api, m["id"])["id"])
    req = receiver.wait(1)[0]
    payload = verified(w["secret"], req)
    assert payload["type"] == "job.succeeded" and payload["data"]["job_id"] == ok["id"]
    assert payload["data"]["job_url"] == "/v1/jobs/" + ok["id"] and "timestamp" in payload
    assert "routes" not in req["body"] and "rollout_ids" not in req["body"]
    assert req["headers"]["webhook-id"].startswith("msg_")
    ds = until(lambda: [d for d in deliveries(api, w["id"]) if d["status"] == "succeeded"])
    assert ds[0]["event_id"] == req["headers"]["webhook-id"] and ds[0]["attempts"] == 1
    assert ds[0]["history"][0]["status_code"] == 204 and ds[0]["history"][0]["latency_ms"] > 0
    # a cancelled job and a failed one (offline training on a rollout without a reward fails at run time)
    long = submit(api, {"type": "train", "model": m["id"], "task": "sort", "steps": 5000, "batch_size": 2, "n": 2})
    wait(api, long["id"], until=lambda j: j["state"] == "running")
    api.post(api.base + f"/v1/jobs/{long['id']}/cancel")
    r = api.post(api.base + "/v1/rollouts", json={"model": "ext", "token_ids": [1, 5, 6, 7], "prompt_length": 2})
    failed = wait(api, submit(api, {"type": "train", "model": m["id"], "rollout_ids": [r.json()["id"]], "steps": 1})["id"])
    assert failed["state"] == "failed" and "reward" in failed["error"]
    reqs = receiver.wait(3)
    kinds = {verified(w["secret"], q)["type"]: verified(w["secret"], q)["data"] for q in reqs}
    assert kinds["job.cancelled"]["job_id"] == long["id"] and "reward" in kinds["job.failed"]["error"]


def test_a_receiver_down_for_a_while_gets_the_delivery_when_it_returns(api):
    m = create_model(api, "wh-down")
    down = Receiver()                      # its port, nobody listening yet
    w = hook(api, down.url, ["job.succeeded"])
    wait(api, quick_job(api, m["id"])["id"])
    first = until(lambda: [d for d in deliveries(api, w["id"]) if d["attempts"] >= 1 and d["history"]])
    assert first[0]["status"] == "pending" and first[0]["history"][0]["status_code"] is None and first[0]["history"][0]["error"]
    down.start()
    try:
        req = down.wait(1, timeout=20)[0]                  # the retry after about 5 s
        assert verified(w["secret"], req)["type"] == "job.succeeded"
        d = until(lambda: [d for d in deliveries(api, w["id"]) if d["status"] == "succeeded"])[0]
        assert d["attempts"] == 2 and d["event_id"] == req["headers"]["webhook-id"]
    finally:
        down.stop()


def test_retry_after_is_honoured_410_disables_and_redirects_are_not_followed(api):
    m = create_model(api, "wh-statuses")
    busy = Receiver(responses=[(429, {"Retry-After": "1"})]).start()
    gone = Receiver(responses=[(410, {})]).start()
    moved = Receiver(responses=[(302, {"Location": "/elsewhere"})]).start()
    try:
        hooks = {name: hook(api, r.url, ["job.succeeded"]) for name, r in [("busy", busy), ("gone", gone), ("moved", moved)]}
        wait(api, quick_job(api, m["id"])["id"])
        two = busy.wait(2, timeout=15)
        assert 0.9 <= two[1]["at"] - two[0]["at"] < 4, "retried after Retry-After (1 s), not the 5 s schedule"
        assert two[0]["headers"]["webhook-id"] == two[1]["headers"]["webhook-id"]
        assert verified(hooks["busy"]["secret"], two[1])["type"] == "job.succeeded"
        gone.wait(1)
        ep = until(lambda: (lambda e: e if not e["enabled"] else None)(api.get(api.base + "/v1/webhooks/" + hooks["gone"]["id"]).json()))
        assert "410" in ep["disabled_reason"]
        moved.wait(1)
        d = until(lambda: [d for d in deliveries(api, hooks["moved"]["id"]) if d["history"]])[0]
        assert d["last_status"] == 302 and d["status"] == "pending"
        time.sleep(0.5)
        assert [q["path"] for q in moved.requests] == ["/hook"], "the redirect was not followed"
    finally:
        for r in (busy, gone, moved):
            r.stop()


def test_secret_rotation_sends_both_signatures_and_redeliver_keeps_the_id(api, receiver):
    m = create_model(api, "wh-rotate")
    w = hook(api, receiver.url, ["job.succeeded"])
    r = api.post(api.base + f"/v1/webhooks/{w['id']}/rotate-secret")
    assert r.status_code == 200 and r.json()["secret"] != w["secret"] and r.json()["previous_secret_valid_until"]
    wait(api, quick_job(api, m["id"])["id"])
    req = receiver.wait(1)[0]
    assert len(req["headers"]["webhook-signature"].split(" ")) == 2
    verified(w["secret"], req)
    verified(r.json()["secret"], req)
    with pytest.raises(Exception):
        Webhook("whsec_" + "A" * 43 + "=").verify(req["body"], req["headers"])
    d = until(lambda: [d for d in deliveries(api, w["id"]) if d["status"] == "succeeded"])[0]
    again = api.post(api.base + f"/v1/webhooks/{w['id']}/deliveries/{d['id']}/redeliver")
    assert again.status_code == 202
    second = receiver.wait(2)[1]
    assert second["headers"]["webhook-id"] == req["headers"]["webhook-id"] and second["body"] == req["body"]
    assert api.post(api.base + f"/v1/webhooks/{w['id']}/deliveries/00000000-0000-0000-0000-000000000000/redeliver").status_code == 404


def test_a_collapsing_run_fires_and_stops_while_the_default_run_does_not(api, receiver):
    m = create_model(api, "wh-collapse", router_std=0.5)
    wait(api, submit(api, {"type": "sft", "model": m["id"], "task": "reverse", "difficulty": 3, "steps": 40, "learning_rate": 3e-3})["id"])
    w = hook(api, receiver.url, ["training.collapse_detected", "job.collapsed", "job.succeeded"])
    base = {"type": "train", "model": m["id"], "policy_version": 40, "task": "reverse", "difficulty": 3, "steps": 20, "batch_size": 4,
            "n": 8, "seed": 1, "on_collapse": "stop"}
    bad = wait(api, submit(api, dict(base, learning_rate=1.0))["id"])
    assert bad["state"] == "collapsed", bad
    assert bad["result"]["collapsed_at_step"] < 20 and bad["result"]["last_good_checkpoint"]["policy_version"] >= 40
    reqs = receiver.wait(2)
    by_type = {verified(w["secret"], q)["type"]: verified(w["secret"], q)["data"] for q in reqs}
    alarm = by_type["training.collapse_detected"]
    assert alarm["job_id"] == bad["id"] and alarm["action"] == "stop" and alarm["rule"] in bad["result"]["rules"]
    assert {"step", "rule", "metric", "value", "threshold", "history"} <= set(alarm) and len(alarm["history"]) >= 1
    assert by_type["job.collapsed"]["job_id"] == bad["id"]
    assert [e["event"] for e in events(api, bad["id"])][-1] == "job.collapsed"
    good = wait(api, submit(api, base)["id"])          # the same job with the default learning rate
    assert good["state"] == "succeeded"
    assert not [e for e in events(api, good["id"]) if e["event"] == "training.collapse_detected"]
    receiver.wait(3)
    time.sleep(0.5)
    assert [json.loads(q["body"])["type"] for q in receiver.requests].count("training.collapse_detected") == 1


def test_pause_on_collapse_then_resume_finishes_the_run(api):
    m = create_model(api, "wh-pause", router_std=0.5)
    only_entropy = {"extreme_frac_tau2": None, "k3_factor": None, "grad_norm_factor": None, "reward_drop": None}
    j = submit(api, {"type": "train", "model": m["id"], "task": "reverse", "difficulty": 3, "steps": 12, "batch_size": 4, "n": 8,
                     "learning_rate": 1.0, "on_collapse": "pause", "collapse": only_entropy, "seed": 1})
    paused = wait(api, j["id"])
    if paused["state"] != "paused":
        pytest.skip(f"this run did not crash its entropy: {paused['state']}")
    at = paused["progress"]["step"]
    assert api.post(api.base + f"/v1/jobs/{j['id']}/resume").status_code == 202
    done = wait(api, j["id"], states=("succeeded", "failed", "collapsed"))
    assert done["state"] == "succeeded" and done["progress"]["step"] == 12
    kinds = [e["event"] for e in events(api, j["id"])]
    assert kinds.count("job.paused") == 1 and kinds.count("training.collapse_detected") == 1
    resumed = [json.loads(e["data"])["data"] for e in events(api, j["id"]) if e["event"] == "job.resumed"]
    assert resumed and resumed[0]["from_step"] == at
    assert api.post(api.base + f"/v1/jobs/{j['id']}/resume").status_code == 409


def test_private_addresses_are_refused_without_the_setting(private_server):
    s = private_server()
    s.start()
    api = session(s.url, s.keys["a"])
    for url in ["http://127.0.0.1:8080/hook", "http://localhost/x", "http://169.254.169.254/latest/meta-data", "http://10.0.0.5/",
                "http://[::1]/", "http://192.168.1.10/"]:
        r = api.post(api.base + "/v1/webhooks", json={"url": url, "events": ["job.succeeded"]})
        assert r.status_code == 422 and ("R3_WEBHOOK_ALLOW_PRIVATE" in r.json()["detail"] or "resolve" in r.json()["detail"]), (url, r.text)
    assert api.get(api.base + "/v1/webhooks").json()["data"] == []


def test_kill9_between_the_event_and_its_delivery_still_delivers(private_server):
    s = private_server(R3_WEBHOOK_ALLOW_PRIVATE="1", R3_WEBHOOK_WORKERS="0")   # events queue up; nothing is sent
    s.start()
    api = session(s.url, s.keys["a"])
    rec = Receiver().start()
    try:
        m = create_model(api, "wh-kill")
        w = hook(api, rec.url, ["job.succeeded"])
        done = wait(api, quick_job(api, m["id"])["id"])
        assert deliveries(api, w["id"])[0]["status"] == "pending"
        time.sleep(1)
        assert rec.requests == []
        s.kill9()
        s.env["R3_WEBHOOK_WORKERS"] = "2"
        s.start()
        req = rec.wait(1, timeout=20)[0]
        assert verified(w["secret"], req)["data"]["job_id"] == done["id"]
    finally:
        rec.stop()
