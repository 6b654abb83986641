#!/usr/bin/env bash
# The C100K run: scripts/bench-c1m.sh at 100,000 connections (every phase of it: ramp, hold with
# keep-alive pings, fanout rounds, reconnect storm with resume, clean close), with its flags:
#
#   scripts/bench-c100k.sh [--apply] [--io uring|epoll] [--hold D] [--rounds K] ...
#
# See scripts/bench-c1m.sh for what it checks, sets, measures and reports.
exec "$(dirname "$0")/bench-c1m.sh" --connections 100000 "$@"
