#!/usr/bin/env bash
# The README's checkpoint download with curl, run by test_scaleout.py::test_cookbook_checkpoint_download_with_curl
# against a live server ($U, $KEY; $M a model, $V one of its checkpointed versions), in a scratch directory.
set -euo pipefail
# [cookbook:checkpoint-download]
# a policy version's checkpoint (HF layout + AdamW state) into ./ckpt: the manifest, then each file
mkdir -p ckpt
curl -s -H "Authorization: Bearer $KEY" "$U/v1/models/$M/versions/$V/checkpoint" \
  | python3 -c 'import json,sys; [print(f["name"], f["url"]) for f in json.load(sys.stdin)["files"]]' \
  | while read -r name url; do curl -sf -H "Authorization: Bearer $KEY" "$U$url" -o "ckpt/$name"; done
sha256sum ckpt/*          # the manifest's digests (each file's ETag)
# [/cookbook]
