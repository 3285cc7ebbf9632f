#!/usr/bin/env bash
# A user's install: a fresh venv, `pip install torch==2.13.0`, `pip install .`, then a subject and
# `reenact make` on the bundled example. Checks that the package's own dependencies give a working tool
# (the Makefile's venv pins more than a user's pip would). Run by `make check-install`.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/reenact-check-install.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
start=$(date +%s)
step() { echo "check-install [$(( $(date +%s) - start )) s] $*"; }

step "fresh venv in $WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/pip" install -q --no-compile torch==2.13.0
# build in a copy, so the checkout gets no build/ or egg-info folders
tar --exclude=.venv --exclude=.git -cf - . | (mkdir "$WORK/src" && cd "$WORK/src" && tar -xf -)
"$V/pip" install -q --no-compile "$WORK/src"
cd "$WORK"

step "speech for the subject: the example driver's sound, repeated to 120 s"
"$V/python" - "$REPO/examples/driver.mp4" speech.wav <<'PY'
import sys
import numpy as np
import soundfile as sf
from reenact.media.audio import read_audio
audio = read_audio(sys.argv[1])
x = audio.mono()
sf.write(sys.argv[2], np.tile(x, int(np.ceil(120 * audio.sample_rate / len(x)))), audio.sample_rate)
PY
echo "The person shown agrees to synthetic videos for testing reenact." > consent.txt

step "reenact subject create"
"$V/reenact" subject create example --portrait "$REPO/examples/portrait.png" --speech speech.wav \
  --consent consent.txt --subjects-dir subjects
step "reenact make"
"$V/reenact" make --subject example --driver "$REPO/examples/driver.mp4" -o out.mp4 --subjects-dir subjects
test -s out.mp4 && test -s out.json
"$V/reenact" verify out.mp4 >/dev/null
step "ok: pip install . gives a working reenact"
