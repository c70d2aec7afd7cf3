"""Acknowledged writes survive kill -9 of the service; a PostgreSQL restart is survived."""
import base64

import numpy as np
import requests


def test_postgres_restart_is_survived(api, server):
    ok = api.post(api.base + "/v1/rollouts", json={"model": "m", "token_ids": [1, 2, 3], "prompt_length": 1})
    assert ok.status_code == 201
    server.pg_ctl("-m", "immediate", "-w", "-l", str(server.data_dir / "pg" / "postgres.log"), "restart", "-o",
                  f"-c listen_addresses='' -c unix_socket_directories='{server.data_dir}/pg/run' -c port=5432")
    r = api.get(api.base + f"/v1/rollouts/{ok.json()['id']}")
    assert r.status_code == 200
    assert api.get(api.base + "/readyz").status_code == 200


def test_kill_9_loses_no_acknowledged_write(server):
    headers = {"Authorization": "Bearer " + server.keys["a"]}
    acked = []
    routes = np.arange(2 * 1 * 2, dtype="<i4").reshape(2, 1, 2) % 8
    for i in range(40):
        r = requests.post(server.url + "/v1/rollouts", headers=headers, json={
            "model": "durable", "token_ids": [1, 2, 3], "prompt_length": 1, "num_experts": 8,
            "routed_experts": {"dtype": "int32", "shape": [2, 1, 2], "data": base64.b64encode(routes.tobytes()).decode()}})
        assert r.status_code == 201
        acked.append(r.json()["id"])
    server.kill9()
    server.start()
    for rid in acked:
        got = requests.get(server.url + f"/v1/rollouts/{rid}/routes?format=json", headers=headers)
        assert got.status_code == 200
        assert got.json()["routed_experts"] == routes.tolist()
