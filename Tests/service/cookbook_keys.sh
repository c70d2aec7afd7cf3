#!/usr/bin/env bash
# The README's key and quota commands, run by test_cookbook.py::test_cookbook_keys_and_quotas against a live
# server ($U, $ADMIN: an admin key; r3 on PATH). Each region is what the README shows.
set -euo pipefail
# [cookbook:keys]
# a read-only key for a trainer that only fetches routes, expiring in 30 days
TRAINER_KEY=$(r3 keys create --project demo --name trainer --scopes routes:read --expires-in 30d)
r3 keys list --project demo                       # id, prefix, name, scopes, created, expires, last used, state
ID=$(r3 keys list --project demo --json | python3 -c 'import json,sys; print([json.loads(l)["id"] for l in sys.stdin if json.loads(l)["name"] == "trainer"][-1])')
NEW_KEY=$(r3 keys rotate --id "$ID" --overlap 1h)  # the old key keeps working for an hour
r3 keys revoke --id "$ID"                          # or stop it now: every server refuses it within 4 s
# the same over the API with an admin key
curl -s -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' "$U/v1/keys" \
     -d '{"name": "ci", "scopes": ["routes:read", "routes:write"], "expires_in_seconds": 86400}'
curl -s -H "Authorization: Bearer $ADMIN" "$U/v1/keys"
curl -s -H "Authorization: Bearer $NEW_KEY" "$U/v1/whoami"   # project, name, prefix, scopes, valid_until, quotas
# [/cookbook]
curl -s -H "Authorization: Bearer $NEW_KEY" "$U/v1/whoami" | python3 -c 'import json,sys; w = json.load(sys.stdin); assert w["project"] == "demo" and w["key_name"] == "trainer" and w["scopes"] == ["routes:read"], w'
test "$(curl -s -o /dev/null -w "%{http_code}" -H "Authorization: Bearer $TRAINER_KEY" "$U/v1/rollouts")" = 401   # revoked
test "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $NEW_KEY" -X DELETE "$U/v1/rollouts/00000000-0000-0000-0000-000000000000")" = 403
# [cookbook:quotas]
r3 quotas set --project demo --route-bytes 50000000000 --active-jobs 4 --rps 200 --burst 400
r3 quotas show --project demo                     # limits and usage as JSON; "none" removes a limit
curl -s -H "Authorization: Bearer $ADMIN" "$U/v1/quota"
# [/cookbook]
r3 quotas show --project demo | python3 -c 'import json,sys; q = json.load(sys.stdin); assert q["active_jobs"]["limit"] == 4 and q["requests_per_second"] == 200, q'
echo ok
