#!/usr/bin/env bash
# The main job on real faces: enroll 3 photos each of 25 LFW people, then query a 4th, unseen
# photo of each and print the ranked matches. The people come from LFW View 2 set 10; the built-in
# model was trained on all LFW people, so this shows the workflow, not accuracy (see README: The model).
# Uses the built-in model and the default SQLite store.
set -euo pipefail
SHARED=${SHARED:-../shared}
HOME_DIR=${DEMO_HOME:-demo-home}
rm -rf "$HOME_DIR"
python scripts/demo_data.py --zip "$SHARED/data/lfw/lfw-deepfunneled-112.zip" \
    --people-file "$SHARED/data/lfw/people.txt" --set 10 --out "$HOME_DIR/data" --people 25

export FACESEARCH_HOME="$HOME_DIR"
facesearch enroll "$HOME_DIR/data/gallery"
facesearch info
probes=("$HOME_DIR"/data/probes/*)
facesearch query --top-k 3 "${probes[@]}"
facesearch query --json "${probes[0]}"
people=("$HOME_DIR"/data/gallery/*)
same=("${people[0]}"/*)
other=("${people[1]}"/*)
facesearch verify "${same[0]}" "${same[1]}"
facesearch verify "${same[0]}" "${other[0]}"
