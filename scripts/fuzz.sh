#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ and runs each for a bounded time; exits non-zero on any crash.
#
#   scripts/fuzz.sh                     every target, FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh --quick             every target, 10 s each
#   scripts/fuzz.sh deflate envelope    only these targets
#
# The targets (fuzz/fuzz_targets/, listed in fuzz/Cargo.toml; README "Fuzzing" says what each
# checks): handshake_request, connection_server, frame_decode, deflate, envelope, jwt,
# publish_batch, cluster_wire, proxy_header, tls_server.
#
# Installs cargo-fuzz from crates.io if it is missing. cargo-fuzz passes nightly-only rustc flags
# (sanitizer coverage, AddressSanitizer); on a stable toolchain RUSTC_BOOTSTRAP=1 lets them
# through. FUZZ_SANITIZER=none builds without AddressSanitizer (faster, fewer findings).
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/, never written to) and the
# inputs earlier runs found (fuzz/corpus-run/<target>/, gitignored). A crash leaves its input in
# fuzz/artifacts/<target>/ (gitignored); replay it from fuzz/ with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> artifacts/<target>/<file>
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$script")/../fuzz"

seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-address}
targets=()
for arg in "$@"; do
    case "$arg" in
        --quick) seconds=10 ;;
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$script"
            exit 0
            ;;
        -*)
            echo "unknown option: $arg" >&2
            exit 2
            ;;
        *) targets+=("$arg") ;;
    esac
done

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

echo "== building ${targets[*]} (sanitizer: $sanitizer)"
start=$SECONDS
cargo fuzz build --sanitizer "$sanitizer"
echo "== built in $((SECONDS - start)) s"

failed=()
for target in "${targets[@]}"; do
    echo "== $target: ${seconds} s"
    mkdir -p "corpus-run/$target" "artifacts/$target"
    # Corpus dirs: the first gets new inputs, the committed seeds are only read.
    if ! cargo fuzz run --sanitizer "$sanitizer" "$target" "corpus-run/$target" "corpus/$target" \
        -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "== crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "== no crash in ${targets[*]}"
