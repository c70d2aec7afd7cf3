"""The HTTP contract: OpenAPI/openapi.yaml is a valid 3.1 document, and schemathesis (--checks all)
finds nothing against the live server."""
import os
import subprocess
import sys
from pathlib import Path

from jobs_client import create_model, session, submit, wait

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "OpenAPI" / "openapi.yaml"


def test_spec_is_valid_openapi():
    p = subprocess.run([sys.executable, "-m", "openapi_spec_validator", str(SPEC)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_schemathesis_all_checks_pass(private_server):
    # A server of its own with small limits: schemathesis follows the Location links it finds, so it
    # creates real models and runs real jobs (and reads their event streams to the end).
    server = private_server(R3_MAX_MODEL_PARAMS="2000000", R3_MAX_JOB_STEPS="3", R3_MAX_JOB_SAMPLES="16", R3_MAX_NEW_TOKENS="16",
                            R3_WEBHOOK_ALLOW_PRIVATE="1")
    server.start()
    # a model and a finished job, so the job operations are exercised on real data too
    api = session(server.url, server.keys["a"])
    m = create_model(api, "schemathesis-seed")
    wait(api, submit(api, {"type": "sft", "model": m["id"], "task": "sort", "steps": 3, "batch_size": 4})["id"])
    # the hooks make positive cases satisfy the rules a schema cannot state (see OpenAPI/schemathesis.toml)
    env = dict(os.environ, SCHEMATHESIS_HOOKS=str(ROOT / "OpenAPI" / "schemathesis_hooks.py"), R3_ST_URL=server.url,
               R3_ST_KEY=server.keys["a"])
    p = subprocess.run(["st", "--config-file", str(ROOT / "OpenAPI" / "schemathesis.toml"), "run", str(SPEC),
                        "--url", server.url, "-H", "Authorization: Bearer " + server.keys["a"],
                        "--checks", "all", "--max-examples", "50", "--seed", "20261124"],
                       capture_output=True, text=True, timeout=900, env=env)
    # on failure, the FAILURES section (the operation, the request as curl, the response) before the tail:
    # a failure seen once must be diagnosable from that one run's output
    out = p.stdout
    failures = out[out.find("FAILURES"):out.find("SUMMARY")] if "FAILURES" in out and "SUMMARY" in out else ""
    tail = "\n".join(out.splitlines()[-60:])
    assert p.returncode == 0, failures[-12000:] + "\n...\n" + tail   # st exits non-zero on any failure
