#!/usr/bin/env bash
# Kernel and process limits for many connections (C100K, C1M) on Linux.
#
#   scripts/tune-linux.sh check  [--connections N]            (default N = 1000000)
#   scripts/tune-linux.sh apply  [--connections N] [--persist]
#   scripts/tune-linux.sh revert
#
# check   Prints every setting that matters for N connections: its current value, what N needs,
#         ok / low / high, and why. Only reads /proc/sys and ulimit, so it needs no root.
#         Exit status: 0 ready for N, 1 something is off, 2 usage error.
# apply   As root: raises (or lowers, for the per-socket buffer defaults and fin_timeout) every
#         sysctl that check reports, saving the old values first in the state file (below).
#         RLIMIT_NOFILE / RLIMIT_MEMLOCK belong to the process that starts the server, which a
#         script cannot change for its caller: apply says how instead. --persist also writes
#         /etc/sysctl.d/60-clarion.conf and /etc/security/limits.d/60-clarion.conf (a file that
#         existed already is backed up next to the state file). Without root, or with a
#         read-only /proc/sys (containers), nothing is changed: one message lists what could not
#         be set and what to do instead, and the status is 1.
# revert  Restores the values apply saved, removes (or restores) the files --persist wrote, and
#         deletes the state file. Running apply twice keeps the first saved values.
#
# State file: $CLARION_TUNE_STATE if set, else /var/lib/clarion/tune-linux.saved as root, else
# ${XDG_STATE_HOME:-$HOME/.local/state}/clarion/tune-linux.saved. One "key<TAB>value" line per
# changed sysctl and one "file<TAB>path<TAB>backup" line per file --persist wrote.
#
# The figures behind the recommendations (measured on the project machine, docs/tuning.md):
# about 4.3 KiB of kernel memory per idle TCP socket (at a million), 114 bytes of server user
# space per idle connection, and 144-160 per topic subscriber at a million (the arithmetic below
# uses 160).
set -euo pipefail

PROG=tune-linux.sh
SYSCTL_CONF=${CLARION_SYSCTL_CONF:-/etc/sysctl.d/60-clarion.conf}
LIMITS_CONF=${CLARION_LIMITS_CONF:-/etc/security/limits.d/60-clarion.conf}

usage() {
  cat >&2 <<EOF
usage: $PROG check  [--connections N]
       $PROG apply  [--connections N] [--persist]
       $PROG revert
N defaults to 1000000. See the header of this script and docs/tuning.md.
EOF
  exit 2
}

die_usage() {
  echo "$PROG: $*" >&2
  usage
}

state_file() {
  if [ -n "${CLARION_TUNE_STATE:-}" ]; then
    printf '%s\n' "$CLARION_TUNE_STATE"
  elif [ "$(id -u)" -eq 0 ]; then
    printf '%s\n' /var/lib/clarion/tune-linux.saved
  else
    printf '%s\n' "${XDG_STATE_HOME:-${HOME:-/nonexistent}/.local/state}/clarion/tune-linux.saved"
  fi
}

# proc_path, read_sysctl, write_sysctl
# shellcheck source=lib/sysctl.sh
. "$(dirname "$0")/lib/sysctl.sh"

# --- the table -------------------------------------------------------------------------------
# Each row: key, current, recommended (shown), status, why, and for apply the value to write
# ("" when apply cannot or should not write it). Kinds of key: sysctl, rlimit, info.
ROW_KEY=() ROW_CUR=() ROW_REC=() ROW_STATUS=() ROW_WHY=() ROW_SET=() ROW_KIND=()

add_row() {
  ROW_KEY+=("$1") ROW_CUR+=("$2") ROW_REC+=("$3") ROW_STATUS+=("$4") ROW_WHY+=("$5")
  ROW_SET+=("$6") ROW_KIND+=("$7")
}

# "at least" for a single number: status ok when cur >= need.
row_min() {
  local key=$1 need=$2 why=$3 cur status set=""
  cur=$(read_sysctl "$key")
  [ -n "$cur" ] || return 0
  if [ "$cur" -ge "$need" ]; then status=ok; else status=low; set=$need; fi
  add_row "$key" "$cur" ">= $need" "$status" "$why" "$set" sysctl
}

# "at most" for a single number: status ok when cur <= limit.
row_max() {
  local key=$1 limit=$2 why=$3 cur status set=""
  cur=$(read_sysctl "$key")
  [ -n "$cur" ] || return 0
  if [ "$cur" -le "$limit" ]; then status=ok; else status=high; set=$limit; fi
  add_row "$key" "$cur" "<= $limit" "$status" "$why" "$set" sysctl
}

build_rows() {
  local n=$1 fds cur a b c ra rb rc status set kernel major minor
  # Descriptors: the connections, plus 5% and 1,024 for listeners, pipes, logs and the rest.
  fds=$((n + n / 20 + 1024))
  fds=$(((fds + 1023) / 1024 * 1024))

  row_min fs.file-max $((fds + 65536)) \
    "system-wide open files: N sockets plus the rest of the host"
  row_min fs.nr_open "$fds" \
    "ceiling for any process's RLIMIT_NOFILE; must be >= the limit you give the server"

  cur=$(ulimit -Sn)
  if [ "$cur" = unlimited ] || [ "$cur" -ge "$fds" ]; then status=ok; else status=low; fi
  add_row "RLIMIT_NOFILE soft" "$cur" ">= $fds" "$status" \
    "fds per process (ulimit -Sn); io_uring: also the fixed-file slots per reactor" "" rlimit
  cur=$(ulimit -Hn)
  if [ "$cur" = unlimited ] || [ "$cur" -ge "$fds" ]; then status=ok; else status=low; fi
  add_row "RLIMIT_NOFILE hard" "$cur" ">= $fds" "$status" \
    "how far the soft limit may be raised (ulimit -Hn, LimitNOFILE=, limits.d)" "" rlimit

  local backlog=1024 netdev=1000
  if [ "$n" -ge 100000 ]; then backlog=65535 netdev=16384
  elif [ "$n" -ge 10000 ]; then backlog=16384 netdev=4096
  fi
  row_min net.core.somaxconn "$backlog" \
    "accept queue cap: absorbs connection bursts (reconnect storms) without drops"
  row_min net.ipv4.tcp_max_syn_backlog "$backlog" \
    "half-open (SYN) queue during bursts; beyond it SYN cookies"
  row_min net.core.netdev_max_backlog "$netdev" \
    "packets queued per CPU before the stack drops them under bursts"

  # tcp_mem is in pages: low / pressure / max for all TCP buffer memory. Sized at one 4 KiB
  # page per socket before pressure starts, 1.5 and 2 pages at pressure and max.
  cur=$(read_sysctl net.ipv4.tcp_mem)
  if [ -n "$cur" ]; then
    read -r a b c <<<"$cur"
    ra=$n rb=$((n * 3 / 2)) rc=$((n * 2))
    status=ok set=""
    if [ "$a" -lt "$ra" ] || [ "$b" -lt "$rb" ] || [ "$c" -lt "$rc" ]; then
      status=low
      set="$((a > ra ? a : ra)) $((b > rb ? b : rb)) $((c > rc ? c : rc))"
    fi
    add_row net.ipv4.tcp_mem "$cur" ">= $ra $rb $rc" "$status" \
      "pages for all TCP buffers; under pressure sockets are squeezed (idle ones hold none)" \
      "$set" sysctl
  fi

  # Per-socket buffer sizes: min / default / max bytes. Defaults are what a busy socket starts
  # with before autotuning; at C1M keep them small so bursts across many sockets fit tcp_mem.
  local rdef=131072 wdef=16384 key
  [ "$n" -ge 500000 ] && rdef=65536
  for key in net.ipv4.tcp_rmem net.ipv4.tcp_wmem; do
    cur=$(read_sysctl "$key")
    [ -n "$cur" ] || continue
    read -r a b c <<<"$cur"
    if [ "$key" = net.ipv4.tcp_rmem ]; then rb=$rdef; else rb=$wdef; fi
    status=ok set=""
    if [ "$a" -gt 4096 ] || [ "$b" -gt "$rb" ]; then
      status=high
      set="$((a < 4096 ? a : 4096)) $((b < rb ? b : rb)) $c"
    fi
    add_row "$key" "$cur" "<= 4096 $rb (max any)" "$status" \
      "per-socket buffer min/default/max bytes; defaults times busy sockets = memory" \
      "$set" sysctl
  done

  # Ephemeral ports: only outgoing connections use them (load generators, proxies, upstreams
  # on this host); the server's accepted sockets do not.
  cur=$(read_sysctl net.ipv4.ip_local_port_range)
  if [ -n "$cur" ]; then
    read -r a b <<<"$cur"
    local want=$((n < 55296 ? n : 55296))
    status=ok set=""
    if [ $((b - a + 1)) -lt "$want" ]; then status=low; set="10240 65535"; fi
    add_row net.ipv4.ip_local_port_range "$cur" ">= $want ports" "$status" \
      "outgoing connections per (src, dst) pair; reserve the server port (docs/tuning.md)" \
      "$set" sysctl
  fi

  cur=$(read_sysctl net.ipv4.tcp_tw_reuse)
  if [ -n "$cur" ]; then
    status=ok set=""
    if [ "$n" -ge 10000 ]; then
      [ "$cur" = 1 ] || { status=low; set=1; }
      add_row net.ipv4.tcp_tw_reuse "$cur" 1 "$status" \
        "reuse TIME_WAIT ports for new outgoing connections (2 = loopback only)" "$set" sysctl
    else
      [ "$cur" = 1 ] || [ "$cur" = 2 ] || { status=low; set=2; }
      add_row net.ipv4.tcp_tw_reuse "$cur" "1 or 2" "$status" \
        "reuse TIME_WAIT ports for new outgoing connections (2 = loopback only)" "$set" sysctl
    fi
  fi

  local fin=60
  [ "$n" -ge 10000 ] && fin=15
  row_max net.ipv4.tcp_fin_timeout "$fin" \
    "seconds an orphaned socket waits in FIN_WAIT_2; churn at scale piles them up"

  if [ -e /proc/sys/net/netfilter/nf_conntrack_max ]; then
    row_min net.netfilter.nf_conntrack_max "$fds" \
      "one conntrack entry per connection; when full, new connections are dropped"
  fi

  # RLIMIT_MEMLOCK: io_uring rings were charged to it before Linux 5.12.
  cur=$(ulimit -l)
  kernel=$(uname -r)
  major=${kernel%%.*} minor=${kernel#*.} minor=${minor%%[!0-9]*}
  if [ "$major" -gt 5 ] || { [ "$major" -eq 5 ] && [ "${minor:-0}" -ge 12 ]; }; then
    add_row "RLIMIT_MEMLOCK (KiB)" "$cur" "any (Linux $major.$minor)" ok \
      "io_uring rings count against it only before Linux 5.12" "" rlimit
  else
    if [ "$cur" = unlimited ]; then status=ok; else status=low; fi
    add_row "RLIMIT_MEMLOCK (KiB)" "$cur" unlimited "$status" \
      "io_uring rings count against it before Linux 5.12 (else epoll fallback)" "" rlimit
  fi

  # The established hash table: sized at boot (thash_entries=), or for a network namespace
  # created later from tcp_child_ehash_entries (negative: the namespace shares the host's).
  cur=$(read_sysctl net.ipv4.tcp_ehash_entries)
  if [ -n "$cur" ]; then
    if [ "${cur#-}" -ge "$n" ]; then status=ok; else status=note; fi
    add_row net.ipv4.tcp_ehash_entries "$cur" ">= $n" "$status" \
      "TCP established hash buckets (boot: thash_entries=; a new netns: tcp_child_ehash_entries); not changed by apply" \
      "" info
  fi

  cur=$(read_sysctl kernel.io_uring_disabled)
  if [ -n "$cur" ]; then
    if [ "$cur" = 0 ]; then status=ok; else status=note; fi
    add_row kernel.io_uring_disabled "$cur" 0 "$status" \
      "1 = only io_uring_group, 2 = off: clarion then uses epoll (not changed by apply)" \
      "" info
  fi
}

print_table() {
  local i
  printf '%-31s %-24s %-28s %-6s %s\n' setting current recommended status why
  for i in "${!ROW_KEY[@]}"; do
    printf '%-31s %-24s %-28s %-6s %s\n' "${ROW_KEY[$i]}" "${ROW_CUR[$i]}" "${ROW_REC[$i]}" \
      "${ROW_STATUS[$i]}" "${ROW_WHY[$i]}"
  done
}

not_ready() {
  local s
  for s in "${ROW_STATUS[@]}"; do
    case $s in low | high) return 0 ;; esac
  done
  return 1
}

memory_estimate() {
  local n=$1 kernel_mib user_mib total_kib
  kernel_mib=$((n * 4414 / 1048576))   # 4.3 KiB of slab per idle socket, measured at a million
  user_mib=$((n * 160 / 1048576))      # 144-160 bytes per subscriber at a million (the larger)
  total_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
  printf '\nmemory for %s idle connections (server side, docs/tuning.md): about %s MiB of kernel\n' \
    "$n" "$kernel_mib"
  printf 'socket memory + %s MiB of user space + fixed memory per reactor; this host has %s MiB.\n' \
    "$user_mib" "$((total_kib / 1024))"
}

rlimit_advice() {
  local fds=$1
  cat <<EOF
RLIMIT_NOFILE is a property of the process that starts clarion; a script cannot raise it for
its caller. Either:
  - systemd: LimitNOFILE=$fds in the unit (deploy/clarion.service);
  - a shell: ulimit -n $fds before starting clarion (root, or a hard limit >= $fds from
    /etc/security/limits.d, which --persist writes; log in again to get it);
  - containers: docker run --ulimit nofile=$fds:$fds (or the runtime's equivalent);
  - or stay below it with io_uring: each reactor holds up to the soft limit in its fixed-file
    table, so --threads >= N / soft limit (e.g. 50 reactors at 20,000 for 1,000,000).
EOF
}

# --- commands --------------------------------------------------------------------------------
cmd_check() {
  local n=$1
  build_rows "$n"
  echo "target: $n connections"
  print_table
  memory_estimate "$n"
  if not_ready; then
    echo "not ready for $n connections: see the rows marked low/high (scripts/tune-linux.sh apply)"
    return 1
  fi
  echo "ready for $n connections"
}

cmd_apply() {
  local n=$1 persist=$2 i key state fds failed=() changed=() manual=()
  fds=$((n + n / 20 + 1024))
  fds=$(((fds + 1023) / 1024 * 1024))
  build_rows "$n"
  state=$(state_file)

  local todo=()
  for i in "${!ROW_KEY[@]}"; do
    if [ "${ROW_KIND[$i]}" = sysctl ] && [ -n "${ROW_SET[$i]}" ]; then todo+=("$i"); fi
    if [ "${ROW_KIND[$i]}" = rlimit ] && [ "${ROW_STATUS[$i]}" = low ]; then
      manual+=("${ROW_KEY[$i]}")
    fi
  done

  # Without root, or with a read-only /proc/sys, say so once and change nothing.
  local why=""
  if [ "$(id -u)" -ne 0 ]; then
    why="not running as root"
  elif [ "${#todo[@]}" -gt 0 ] && ! [ -w "$(proc_path "${ROW_KEY[${todo[0]}]}")" ]; then
    why="/proc/sys is read-only here (a container?)"
  fi
  if [ -n "$why" ]; then
    {
      echo "$PROG: $why: nothing was changed."
      if [ "${#todo[@]}" -gt 0 ]; then
        echo "These sysctls could not be set; as root on the host (or in the container's"
        echo "runtime config, e.g. docker run --sysctl for net.* keys) set:"
        for i in "${todo[@]}"; do
          printf '  sysctl -w %s="%s"    # now %s\n' "${ROW_KEY[$i]}" "${ROW_SET[$i]}" \
            "${ROW_CUR[$i]}"
        done
        echo "or run: sudo $0 apply --connections $n [--persist]"
      fi
      if [ "${#manual[@]}" -gt 0 ]; then
        echo "Also low: ${manual[*]}."
        rlimit_advice "$fds"
      fi
    } >&2
    return 1
  fi

  # Save the old values first (keeping values an earlier apply saved: those are the originals).
  mkdir -p "$(dirname "$state")"
  touch "$state"
  for i in "${todo[@]}"; do
    key=${ROW_KEY[$i]}
    if ! cut -f1 "$state" | grep -qxF "$key"; then
      printf '%s\t%s\n' "$key" "${ROW_CUR[$i]}" >>"$state"
    fi
  done

  for i in "${todo[@]}"; do
    key=${ROW_KEY[$i]}
    if write_sysctl "$key" "${ROW_SET[$i]}"; then
      changed+=("$key")
      printf 'set %s = %s (was %s)\n' "$key" "${ROW_SET[$i]}" "${ROW_CUR[$i]}"
    else
      failed+=("$key")
    fi
  done
  [ "${#todo[@]}" -gt 0 ] || echo "every sysctl is already right for $n connections"
  # A key that could not be written was not changed: forget its saved value.
  for key in "${failed[@]}"; do
    awk -F '\t' -v k="$key" '$1 != k' "$state" >"$state.tmp" && mv "$state.tmp" "$state"
  done

  if [ "$persist" = 1 ]; then
    persist_files "$state" "$fds"
  fi

  local rc=0
  if [ "${#failed[@]}" -gt 0 ]; then
    {
      echo "$PROG: could not set: ${failed[*]} (read-only in this namespace?)."
      echo "Set them on the host: sysctl -w KEY=VALUE, or in the container runtime's config."
    } >&2
    rc=1
  fi
  if [ "${#manual[@]}" -gt 0 ]; then
    echo
    echo "Still low for this shell: ${manual[*]}."
    rlimit_advice "$fds"
  fi
  echo "old values saved in $state (scripts/tune-linux.sh revert restores them)"
  return "$rc"
}

# Backs up a file the first time this script is about to overwrite it, and records it.
record_file() {
  local state=$1 path=$2 backup=none
  if cut -f1,2 "$state" | grep -qxF "$(printf 'file\t%s' "$path")"; then return 0; fi
  if [ -e "$path" ]; then
    backup="$state.$(basename "$path").bak"
    cp -p "$path" "$backup"
  fi
  printf 'file\t%s\t%s\n' "$path" "$backup" >>"$state"
}

persist_files() {
  local state=$1 fds=$2 i key val tmp
  declare -A conf=()
  # Keep what an earlier --persist wrote, then add every value this run changed.
  if [ -f "$SYSCTL_CONF" ]; then
    while IFS='=' read -r key val; do
      key=$(printf '%s' "$key" | tr -d ' ')
      case $key in '' | \#*) continue ;; esac
      conf[$key]=$(printf '%s' "$val" | sed 's/^ *//; s/ *$//')
    done <"$SYSCTL_CONF"
  fi
  for i in "${!ROW_KEY[@]}"; do
    if [ "${ROW_KIND[$i]}" != sysctl ] || [ -z "${ROW_SET[$i]}" ]; then continue; fi
    key=${ROW_KEY[$i]}
    conf[$key]=$(read_sysctl "$key")
  done
  record_file "$state" "$SYSCTL_CONF"
  mkdir -p "$(dirname "$SYSCTL_CONF")"
  tmp=$(mktemp)
  {
    echo "# Written by clarion scripts/tune-linux.sh apply --persist; undo with revert."
    for key in $(printf '%s\n' "${!conf[@]}" | sort); do
      printf '%s = %s\n' "$key" "${conf[$key]}"
    done
  } >"$tmp"
  install -m 0644 "$tmp" "$SYSCTL_CONF"
  rm -f "$tmp"
  echo "wrote $SYSCTL_CONF"

  record_file "$state" "$LIMITS_CONF"
  mkdir -p "$(dirname "$LIMITS_CONF")"
  tmp=$(mktemp)
  {
    echo "# Written by clarion scripts/tune-linux.sh apply --persist; undo with revert."
    echo "# Applies at the next login (pam_limits); systemd services use LimitNOFILE= instead."
    echo "# '*' does not match root, hence the root lines."
    printf '*\tsoft\tnofile\t%s\n*\thard\tnofile\t%s\n' "$fds" "$fds"
    printf 'root\tsoft\tnofile\t%s\nroot\thard\tnofile\t%s\n' "$fds" "$fds"
    printf '*\tsoft\tmemlock\tunlimited\n*\thard\tmemlock\tunlimited\n'
  } >"$tmp"
  install -m 0644 "$tmp" "$LIMITS_CONF"
  rm -f "$tmp"
  echo "wrote $LIMITS_CONF"
}

cmd_revert() {
  local state tag key val backup rc=0 failed=()
  state=$(state_file)
  if [ ! -f "$state" ]; then
    echo "nothing to revert: no state file at $state"
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "$PROG: revert needs root (it writes /proc/sys); nothing was changed" >&2
    return 1
  fi
  while IFS=$'\t' read -r tag key backup; do
    [ -n "$tag" ] || continue
    if [ "$tag" = file ]; then
      if [ "$backup" = none ]; then
        rm -f "$key" && echo "removed $key"
      else
        cp -p "$backup" "$key" && rm -f "$backup" && echo "restored $key"
      fi
    fi
  done <"$state"
  while IFS=$'\t' read -r key val; do
    if [ -z "$key" ] || [ "$key" = file ]; then continue; fi
    if write_sysctl "$key" "$val"; then
      echo "restored $key = $val"
    else
      failed+=("$key")
    fi
  done <"$state"
  if [ "${#failed[@]}" -gt 0 ]; then
    echo "$PROG: could not restore: ${failed[*]}; state kept in $state" >&2
    rc=1
  else
    rm -f "$state"
    rmdir "$(dirname "$state")" 2>/dev/null || true
    echo "removed $state"
  fi
  return "$rc"
}

# --- arguments -------------------------------------------------------------------------------
[ $# -ge 1 ] || usage
cmd=$1
shift
connections=1000000
persist=0
while [ $# -gt 0 ]; do
  case $1 in
    --connections) [ $# -ge 2 ] || die_usage "--connections needs a number"
      connections=$2; shift 2 ;;
    --connections=*) connections=${1#*=}; shift ;;
    --persist) persist=1; shift ;;
    -h | --help) usage ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done
case $connections in
  '' | *[!0-9]*) die_usage "--connections must be a positive integer, not '$connections'" ;;
esac
if [ "${#connections}" -gt 10 ] || [ "$connections" -lt 1 ] || [ "$connections" -gt 1000000000 ]; then
  die_usage "--connections must be between 1 and 1000000000"
fi
connections=$((10#$connections))

case $cmd in
  check) [ "$persist" = 0 ] || die_usage "--persist is for apply"; cmd_check "$connections" ;;
  apply) cmd_apply "$connections" "$persist" ;;
  revert) cmd_revert ;;
  -h | --help | help) usage ;;
  *) die_usage "unknown command: $cmd" ;;
esac
