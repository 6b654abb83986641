# Reading and writing sysctls through /proc/sys (sourced by tune-linux.sh and the benchmark
# scripts), and for a benchmark run: set a value with the old one saved, and restore everything
# saved, once, whatever ends the run.

# The /proc/sys path of a dotted key.
proc_path() { printf '/proc/sys/%s\n' "${1//.//}"; }

# Current value with runs of whitespace collapsed to one space; empty if the key is absent.
read_sysctl() {
  local p
  p=$(proc_path "$1")
  [ -r "$p" ] || return 0
  tr -s ' \t' '  ' <"$p" | tr -d '\n'
}

# write_sysctl KEY VALUE: status 1 when it cannot be written (no root, read-only /proc/sys).
write_sysctl() {
  local p
  p=$(proc_path "$1")
  [ -w "$p" ] || return 1
  { printf '%s\n' "$2" >"$p"; } 2>/dev/null
}

SYSCTL_SAVED=() # "key<TAB>old value" for every value set_sysctl changed, in order

# set_sysctl KEY VALUE: sets it, saving the old value first (once per key); status 1 when it
# cannot be written.
set_sysctl() {
  local key=$1 value=$2 old entry saved=0
  old=$(read_sysctl "$key")
  write_sysctl "$key" "$value" || return 1
  for entry in "${SYSCTL_SAVED[@]+"${SYSCTL_SAVED[@]}"}"; do
    [ "${entry%%$'\t'*}" = "$key" ] && saved=1
  done
  [ "$saved" = 1 ] || SYSCTL_SAVED+=("$key"$'\t'"$old")
  echo "${PROG:-sysctl}: set $key = $value (was $old)"
}

# Writes back every saved value, newest first, and forgets them.
restore_sysctls() {
  local i entry key
  for ((i = ${#SYSCTL_SAVED[@]} - 1; i >= 0; i--)); do
    entry=${SYSCTL_SAVED[$i]} key=${entry%%$'\t'*}
    if write_sysctl "$key" "${entry#*$'\t'}"; then
      echo "${PROG:-sysctl}: restored $key = ${entry#*$'\t'}"
    else
      echo "${PROG:-sysctl}: could not restore $key to ${entry#*$'\t'}" >&2
    fi
  done
  SYSCTL_SAVED=()
}
