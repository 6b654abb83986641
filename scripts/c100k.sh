#!/usr/bin/env bash
# The C100K run: one `clarion serve --io uring` process holds 100,000 WebSocket connections
# on a host whose RLIMIT_NOFILE hard limit is far lower (here 20,000), each proven open by an
# echo, then closes them all cleanly. The server keeps its sockets as io_uring direct
# descriptors (7 reactors x up to 20,000 fixed-file slots); the client side is the test
# process, whose threads each take a private file table (unshare(CLONE_FILES)) and connect
# from 127.0.0.2-127.0.0.6 (20,000 per source address, far below the ephemeral port range).
#
# Needs: io_uring, about 1 GiB of kernel memory for 200,000 loopback sockets, and a listen
# backlog that absorbs the ramp (net.core.somaxconn >= 4096). The run takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

somaxconn=$(cat /proc/sys/net/core/somaxconn)
if [ "$somaxconn" -lt 4096 ]; then
  echo "c100k: net.core.somaxconn is $somaxconn; raise it: sysctl -w net.core.somaxconn=4096" >&2
  exit 2
fi
exec cargo test --release --test capacity -- --ignored hundred_thousand --nocapture
