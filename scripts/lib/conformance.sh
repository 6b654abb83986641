# The serve flags of the Autobahn|Testsuite runs (test.sh, autobahn-deflate.sh, autobahn-tls.sh):
# /echo on, no per-client rates (the suite's cases send as fast as they can), and the 16 MiB
# frames and messages of cases 9.* (the production defaults are 64 KiB).
# shellcheck shell=bash
conformance="--echo --message-rate 0 --byte-rate 0 --max-frame-size 16777216 --max-message-size 16777216"
