#!/usr/bin/env bash
# The main job on real faces: enroll 3 photos each of 25 LFW people, then query a 4th, unseen
# photo of each and print the ranked matches. Uses the built-in model and the default SQLite store.
set -euo pipefail
SHARED=${SHARED:-../shared}
HOME_DIR=${DEMO_HOME:-demo-home}
rm -rf "$HOME_DIR"
python scripts/demo_data.py --zip "$SHARED/data/lfw/lfw-deepfunneled-112.zip" --out "$HOME_DIR/data" --people 25

export FACESEARCH_HOME="$HOME_DIR"
facesearch enroll "$HOME_DIR/data/gallery"
facesearch info
facesearch query --top-k 3 "$HOME_DIR"/data/probes/*
facesearch query --json "$HOME_DIR/data/probes/$(ls "$HOME_DIR/data/probes" | head -1)"
a=$(ls "$HOME_DIR"/data/gallery/*/* | head -1); b=$(ls "$HOME_DIR"/data/gallery/*/* | head -2 | tail -1)
c=$(ls "$HOME_DIR"/data/gallery/*/* | tail -1)
facesearch verify "$a" "$b"
facesearch verify "$a" "$c"
