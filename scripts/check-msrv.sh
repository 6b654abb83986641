#!/usr/bin/env bash
# Checks the workspace's `rust-version` against what can be checked without another toolchain:
# every locked dependency's own declared `rust-version` must be at or below ours (clippy's
# `incompatible_msrv` lint, run by scripts/test.sh, checks our own use of std against it).
# Usage: scripts/check-msrv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
meta = json.load(sys.stdin)
def version(text):
    parts = [int(x) for x in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
ours = {p["rust_version"] for p in meta["packages"] if p["id"] in meta["workspace_members"]}
if len(ours) != 1 or None in ours:
    sys.exit(f"check-msrv: every workspace crate must inherit one rust-version, found {ours}")
msrv = ours.pop()
resolved = {node["id"] for node in meta["resolve"]["nodes"]}
newer = sorted(
    "%s %s needs %s" % (p["name"], p["version"], p["rust_version"])
    for p in meta["packages"]
    if p["id"] in resolved and p.get("rust_version") and version(p["rust_version"]) > version(msrv)
)
if newer:
    sys.exit("check-msrv: locked dependencies newer than rust-version " + msrv + ":\n  " + "\n  ".join(newer))
print(f"rust-version {msrv}: every locked dependency declares it or older")
'
