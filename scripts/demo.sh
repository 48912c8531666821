#!/usr/bin/env bash
# The main job on real faces: enroll 3 photos each of 25 LFW people, then query a 4th, unseen
# photo of each and print the ranked matches (at most one identity is a match: the accepted one), and
# 5 photos of people never enrolled, which come back unknown. The people come from LFW View 2 set 10;
# the built-in model (SFace) was trained on data that may include LFW's people (README: The built-in
# models), so this shows the workflow, not accuracy.
# Then the same with photos: --detect on LFW's original photos and on a photo of two people.
# Uses the built-in model and the default SQLite store.
set -euo pipefail
SHARED=${SHARED:-../shared}
HOME_DIR=${DEMO_HOME:-demo-home}
rm -rf "$HOME_DIR"
python scripts/demo_data.py --zip "$SHARED/data/lfw/lfw-deepfunneled-112.zip" \
    --people-file "$SHARED/data/lfw/people.txt" --set 10 --out "$HOME_DIR/data" --people 25 \
    --photos "$SHARED/data/lfw/lfw-original-150-sample"

export FACESEARCH_HOME="$HOME_DIR"
facesearch enroll "$HOME_DIR/data/gallery"
facesearch info
probes=("$HOME_DIR"/data/probes/*)
facesearch query --top-k 3 "${probes[@]}"
facesearch query --json "${probes[0]}"
facesearch query --top-k 2 "$HOME_DIR"/data/strangers/*
people=("$HOME_DIR"/data/gallery/*)
same=("${people[0]}"/*)
other=("${people[1]}"/*)
facesearch verify "${same[0]}" "${same[1]}"
facesearch verify "${same[0]}" "${other[0]}"

# ordinary photos, not aligned crops: --detect finds and aligns each face (LFW's original photos of 30
# people, 3 each, in the same gallery), then every face of a two-person photo is searched
facesearch enroll --detect "$HOME_DIR/data/photos"
facesearch query --detect --top-k 2 "$HOME_DIR/data/group.jpg"

# the same gallery over HTTP: `facesearch serve` with a key, one query with curl, then stopped
KEY=$(facesearch keys create --scope read --name demo -q)
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
facesearch serve --port "$PORT" -q &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
echo "GET /v1/identities without a key: HTTP $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/v1/identities")"
echo "POST /v1/query with the key:"
curl -s -H "Authorization: Bearer $KEY" -F "probe=@${probes[0]}" "http://127.0.0.1:$PORT/v1/query?top_k=2"
echo
kill "$SERVER"
wait "$SERVER" 2>/dev/null || true
