#!/usr/bin/env bash
# Run the Autobahn|Testsuite (wstest -m fuzzingclient) against a WebSocket
# echo server and summarise the result.
#
# Usage: scripts/autobahn.sh [--url ws://127.0.0.1:9001/echo] [--cases '1.*,2.*,...']
#                            [--exclude '12.*,13.*'] [--agent NAME] [--report-dir DIR]
#                            [--server-cmd 'CMD'] [--server-wait SECS] [--timeout SECS]
#
# How wstest gets installed (it is Python 2 code; bookworm has no Python 2):
#   1. Debian *bullseye*'s python2.7 (+ libssl1.1, libffi7, dev headers) .debs are
#      fetched with `apt-get download` through a private sources.list/state dir
#      that reuses this machine's own Debian mirror host, and unpacked with
#      `dpkg -x` into a private prefix. Nothing is installed into the system.
#   2. That python2.7 runs with LD_LIBRARY_PATH/PYTHONHOME pointing into the
#      prefix. pip 20.3.4 (last pip for py2; its wheel is fetched by python3's
#      pip) installs the pinned packages of scripts/autobahn/requirements-py2.txt
#      with --user into a private PYTHONUSERBASE. wsaccel (C speedups) is built
#      with gcc if possible, and skipped otherwise.
#
# Cache: everything (debs, the unpacked prefix, downloaded wheels and
# sdists, the installed packages) lives in ${AUTOBAHN_CACHE:-$HOME/.cache/clarion-autobahn}.
# Each step writes a stamp file when done, so a rerun needs no network. Delete
# the cache dir to start over.
#
# After the run, <report-dir>/index.json is parsed; every case that is not
# OK/NON-STRICT/INFORMATIONAL (or whose close behaviour is not OK/INFORMATIONAL)
# is printed, then the line `autobahn: N passed, M failed`. Exit 0 iff M == 0 and N > 0.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
CONF_DIR="$SCRIPT_DIR/autobahn"
CACHE="${AUTOBAHN_CACHE:-${HOME:-/root}/.cache/clarion-autobahn}"

# Bump when the install procedure changes, to invalidate the stamps.
INSTALL_REV=1
DEB_SUITE=bullseye
DEB_PACKAGES=(python2.7 python2.7-minimal libpython2.7-minimal libpython2.7-stdlib
              libpython2.7-dev libssl1.1 libffi7)
PIP_VERSION=20.3.4
BUILD_PINS=(setuptools==44.0.0 wheel==0.37.1)
ACCEL_PINS=(Cython==3.0.12 wsaccel==0.6.6)

URL="ws://127.0.0.1:9001/echo"
CASES="1.*,2.*,3.*,4.*,5.*,6.*,7.*,8.*,9.*,10.*"
EXCLUDE="12.*,13.*"
AGENT="Clarion"
REPORT_DIR="$REPO_ROOT/autobahn-reports"
SERVER_CMD=""
SERVER_WAIT=120
RUN_TIMEOUT=900

log()  { echo "autobahn.sh: $*" >&2; }
die()  { echo "autobahn.sh: error: $*" >&2; exit 2; }
usage() { sed -n '/^# Usage:/,/^#$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --url)         URL="${2:?--url needs a value}"; shift 2 ;;
    --cases)       CASES="${2?--cases needs a value}"; shift 2 ;;
    --exclude)     EXCLUDE="${2?--exclude needs a value}"; shift 2 ;;
    --agent)       AGENT="${2:?--agent needs a value}"; shift 2 ;;
    --report-dir)  REPORT_DIR="${2:?--report-dir needs a value}"; shift 2 ;;
    --server-cmd)  SERVER_CMD="${2:?--server-cmd needs a value}"; shift 2 ;;
    --server-wait) SERVER_WAIT="${2:?--server-wait needs a value}"; shift 2 ;;
    --timeout)     RUN_TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
    -h|--help)     usage; exit 0 ;;
    *)             usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ "$SERVER_WAIT" =~ ^[0-9]+$ ]] || die "--server-wait must be a number of seconds"
[[ "$RUN_TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"

for tool in python3 apt-get dpkg timeout setsid flock; do
  command -v "$tool" >/dev/null || die "'$tool' is required but not found"
done

# ---------------------------------------------------------------------------
# Install (cached)
# ---------------------------------------------------------------------------
APT_DIR="$CACHE/apt"
DEB_DIR="$CACHE/debs"
PREFIX="$CACHE/py2"
DIST="$CACHE/dist"           # downloaded wheels/sdists
USERBASE="$CACHE/userbase"   # installed python2 packages (PYTHONUSERBASE)
STAMPS="$CACHE/stamps"
PY2="$PREFIX/usr/bin/python2.7"

mkdir -p "$CACHE" "$STAMPS"
exec 9>"$CACHE/.lock"
flock -w 1800 9 || die "cache $CACHE is locked by another run"

stamp_ok()  { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { printf '%s' "$2" > "$STAMPS/$1"; }

# Command prefix for running the private python2.7 (fills the array PY2_ARGV).
py2_argv() {
  local libdirs="" d
  for d in "$PREFIX"/usr/lib/*-linux-gnu* "$PREFIX"/lib/*-linux-gnu*; do
    [[ -d "$d" ]] && libdirs="$libdirs${libdirs:+:}$d"
  done
  PY2_ARGV=(env -u PYTHONPATH -u PYTHONNOUSERSITE -u PYTHONSTARTUP -u VIRTUAL_ENV
    LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    PYTHONHOME="$PREFIX/usr" PYTHONUSERBASE="$USERBASE"
    PIP_CACHE_DIR="$CACHE/pip-cache" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_PYTHON_VERSION_WARNING=1
    "$PY2")
}
py2() { py2_argv; "${PY2_ARGV[@]}" "$@"; }

# Debian mirror host of this machine (from its own apt sources), suite swapped.
find_debian_mirror() {
  python3 - <<'EOF'
import glob, os, re
codename = "bookworm"
try:
    for line in open("/etc/os-release"):
        if line.startswith("VERSION_CODENAME="):
            codename = line.split("=", 1)[1].strip().strip('"') or codename
except OSError:
    pass
entries = []  # (uri, suites, signed_by)
files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
for f in files:
    try:
        lines = open(f).read().splitlines()
    except OSError:
        continue
    for line in lines:
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
        if m:
            opts = dict(o.split("=", 1) for o in (m.group(1) or "").split() if "=" in o)
            entries.append((m.group(2), [m.group(3)], opts.get("signed-by", "")))
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    try:
        text = open(f).read()
    except OSError:
        continue
    for para in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in para.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, val = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = val.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            entries.append((uri, fields.get("suites", "").split(), fields.get("signed-by", "")))
for uri, suites, signed in entries:
    if codename in suites:
        # The full Debian keyring also has the older releases' keys.
        full = "/usr/share/keyrings/debian-archive-keyring.gpg"
        if os.path.isfile(full) or not os.path.isfile(signed):
            signed = full
        print(uri.rstrip("/"), signed)
        break
EOF
}

APT_OPTS=()
setup_apt() {
  local mirror keyring
  read -r mirror keyring < <(find_debian_mirror) || true
  [[ -n "${mirror:-}" ]] || die "could not find this machine's Debian mirror in /etc/apt/sources.list{,.d/*}"
  mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
  local opt=""
  [[ -f "$keyring" ]] && opt="[signed-by=$keyring] "
  echo "deb ${opt}${mirror} ${DEB_SUITE} main" > "$APT_DIR/sources.list"
  log "using private apt source: $(cat "$APT_DIR/sources.list")"
  APT_OPTS=(-q
    -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::Cache=$APT_DIR/cache"
    -o "APT::Sandbox::User=root"
    -o "Acquire::Languages=none"
    -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false")
}

install_debs() {
  local key="$INSTALL_REV ${DEB_SUITE} ${DEB_PACKAGES[*]}"
  if stamp_ok debs "$key" && compgen -G "$DEB_DIR/*.deb" >/dev/null; then return 0; fi
  log "downloading ${DEB_SUITE} python2.7 packages (private apt state, nothing installed)"
  setup_apt
  apt-get "${APT_OPTS[@]}" update >"$APT_DIR/update.log" 2>&1 \
    || { tail -20 "$APT_DIR/update.log" >&2; die "apt-get update (private ${DEB_SUITE} source) failed"; }
  rm -rf "$DEB_DIR.tmp"; mkdir -p "$DEB_DIR.tmp"
  (cd "$DEB_DIR.tmp" && apt-get "${APT_OPTS[@]}" download "${DEB_PACKAGES[@]}") \
    || die "apt-get download of ${DEB_PACKAGES[*]} from ${DEB_SUITE} failed"
  rm -rf "$DEB_DIR"; mv "$DEB_DIR.tmp" "$DEB_DIR"
  stamp_set debs "$key"
  rm -rf "$APT_DIR/lists" "$APT_DIR/cache"   # only needed for the download
}

unpack_prefix() {
  local key
  key="$INSTALL_REV $(cd "$DEB_DIR" && printf '%s ' ./*.deb)"
  if stamp_ok prefix "$key" && [[ -x "$PY2" ]]; then return 0; fi
  log "unpacking python2.7 into $PREFIX"
  rm -rf "$PREFIX.tmp" "$PREFIX"; mkdir -p "$PREFIX.tmp"
  local deb
  for deb in "$DEB_DIR"/*.deb; do dpkg -x "$deb" "$PREFIX.tmp"; done
  mv "$PREFIX.tmp" "$PREFIX"
  py2 -c 'import ssl, hashlib, ctypes, zlib, json' \
    || die "the unpacked python2.7 does not work (see the error above)"
  stamp_set prefix "$key"
  rm -f "$STAMPS/site"   # packages must be reinstalled for a new interpreter
}

# pip download into $DIST, offline from $DIST first (files of an earlier
# partial install), from PyPI only if something is missing.
pip_fetch() {
  py2 -m pip download -d "$DIST" --no-index -f "$DIST" "$@" >/dev/null 2>&1 \
    || py2 -m pip download -d "$DIST" "$@"
}

install_site() {
  local reqs="$CONF_DIR/requirements-py2.txt" key
  [[ -f "$reqs" ]] || die "missing $reqs"
  key="$INSTALL_REV pip=$PIP_VERSION $(sha256sum "$reqs" | cut -d' ' -f1) ${BUILD_PINS[*]} ${ACCEL_PINS[*]}"
  if stamp_ok site "$key" && [[ -f "$USERBASE/bin/wstest" ]]; then return 0; fi
  log "installing the Python 2 packages into $USERBASE"
  rm -rf "$USERBASE"; mkdir -p "$DIST"
  local pipwhl="$DIST/pip-$PIP_VERSION-py2.py3-none-any.whl"
  if [[ ! -f "$pipwhl" ]]; then
    python3 -m pip download --no-deps -d "$DIST" "pip==$PIP_VERSION" >/dev/null \
      || die "python3 -m pip download pip==$PIP_VERSION failed (is python3-pip installed?)"
  fi
  # Bootstrap: run pip from its wheel once to install itself, then use -m pip
  # (PEP 517 builds don't work when pip runs from inside a zip).
  py2 "$pipwhl/pip" install -q --no-warn-script-location --user --no-index --no-deps "$pipwhl" \
    || die "bootstrapping pip $PIP_VERSION for python2.7 failed"
  pip_fetch -q --no-deps "${BUILD_PINS[@]}" \
    || die "downloading ${BUILD_PINS[*]} failed"
  py2 -m pip install -q --no-warn-script-location --user --no-index --no-deps -f "$DIST" "${BUILD_PINS[@]}" \
    || die "installing ${BUILD_PINS[*]} failed"
  # sdists (autobahn, txaio, PyHamcrest) are pure Python; pip builds them with
  # the setuptools/wheel above (--no-build-isolation keeps it offline).
  pip_fetch -q --no-deps --no-build-isolation -r "$reqs" \
    || die "downloading the Python 2 packages from PyPI failed"
  py2 -m pip install -q --no-warn-script-location --user --no-deps --no-build-isolation --no-index -f "$DIST" -r "$reqs" \
    || die "installing the Python 2 packages failed"
  install_accel || log "warning: wsaccel not installed; wstest will use the slower pure-Python code" \
    "(to retry: rm $STAMPS/site)"
  py2 -c 'import autobahntestsuite.wstest, twisted, OpenSSL' \
    || die "wstest does not import after the install (see the error above)"
  [[ -f "$USERBASE/bin/wstest" ]] || die "pip did not create $USERBASE/bin/wstest"
  stamp_set site "$key"
}

# Optional C speedups: compiled against the prefix's libpython2.7-dev headers.
install_accel() {
  command -v gcc >/dev/null || { log "gcc not found, skipping wsaccel"; return 1; }
  local inc="$PREFIX/usr/include"
  local blog="$CACHE/wsaccel-build.log"
  {
    pip_fetch --no-deps --no-build-isolation "${ACCEL_PINS[@]}" &&
    py2 -m pip install --no-warn-script-location --user --no-deps --no-index -f "$DIST" "${ACCEL_PINS[0]}" &&
    CFLAGS="-I$inc/python2.7 -I$inc" \
      py2 -m pip install --no-warn-script-location --user --no-deps --no-build-isolation --no-index -f "$DIST" "${ACCEL_PINS[1]}" &&
    py2 -c 'import wsaccel.utf8validator, wsaccel.xormask'
  } >"$blog" 2>&1 || { tail -5 "$blog" >&2; log "wsaccel build failed (full log: $blog)"; return 1; }
  log "wsaccel built and installed"
}

t0=$SECONDS
install_debs
unpack_prefix
install_site
log "wstest ready ($((SECONDS - t0))s; cache: $CACHE)"

# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------
read -r HOST PORT < <(python3 - "$URL" <<'EOF'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
if u.scheme not in ("ws", "wss") or not u.hostname:
    sys.exit(0)
print(u.hostname, u.port or (443 if u.scheme == "wss" else 80))
EOF
) || true
[[ -n "${HOST:-}" && -n "${PORT:-}" ]] || die "invalid --url '$URL' (expected ws://host:port/path)"

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

mkdir -p "$REPORT_DIR" || die "cannot create report dir $REPORT_DIR"
REPORT_DIR="$(cd "$REPORT_DIR" && pwd)"
# Drop the previous run's report files so a stale index.json can't be parsed.
if [[ -f "$REPORT_DIR/index.json" ]]; then
  find "$REPORT_DIR" -maxdepth 1 -type f \( -name '*.json' -o -name '*.html' \) -delete
fi

# Where the run's time went. The suite is a ping-pong (one message out, its echo back), so on an
# otherwise idle machine wall ~= wstest CPU + server CPU; a large rest is waiting: for a CPU
# (other work on the machine) or on the server (stalls). The compression sets (12.*, 13.*) are
# bound by wstest's own CPU (Python: deflate, UTF-8 checks, SHA-1 of every message), so their
# length follows the machine's speed and load (docs/benchmarks.md, "Autobahn's run time").
report_time() {
  local wall user sys
  read -r wall user sys < "$REPORT_DIR/wstest.time" 2>/dev/null || return 0
  python3 - "$wall" "$user" "$sys" "$SERVER_PID" <<'EOF' >&2
import glob, os, sys
wall, user, sys_, sid = sys.argv[1:]
client = float(user) + float(sys_)
line = "autobahn.sh: wstest wall %.1f s, wstest CPU %.1f s" % (float(wall), client)
if sid:
    # utime + stime of every process in the server's session (it was started with setsid).
    ticks = 0
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(path).read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[3] == sid:
            ticks += int(fields[11]) + int(fields[12])
    server = ticks / float(os.sysconf("SC_CLK_TCK"))
    line += ", server CPU %.1f s, rest (waiting for a CPU or on the peer) %.1f s" % (
        server, float(wall) - client - server)
print(line)
EOF
}

SERVER_PID=""
stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    log "stopping server (pid $SERVER_PID)"
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
    local _
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -n "$SERVER_CMD" ]]; then
  port_open && die "something is already listening on $HOST:$PORT; not starting --server-cmd"
  log "starting server: $SERVER_CMD (log: $REPORT_DIR/server.log)"
  # setsid: own process group, so stop_server also ends children (e.g. of cargo run).
  setsid bash -c "$SERVER_CMD" >"$REPORT_DIR/server.log" 2>&1 </dev/null &
  SERVER_PID=$!
  deadline=$((SECONDS + SERVER_WAIT))
  until port_open; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      tail -20 "$REPORT_DIR/server.log" >&2 || true
      die "server command exited before listening on $HOST:$PORT"
    fi
    (( SECONDS < deadline )) || die "server did not listen on $HOST:$PORT within ${SERVER_WAIT}s"
    sleep 0.2
  done
  log "server is listening on $HOST:$PORT"
else
  port_open || die "no server listening on $HOST:$PORT (start one, or pass --server-cmd)"
fi

SPEC="$REPORT_DIR/fuzzingclient.json"
python3 - "$CONF_DIR/fuzzingclient.json" "$SPEC" "$URL" "$AGENT" "$CASES" "$EXCLUDE" "$REPORT_DIR" <<'EOF'
import json, sys
base, out, url, agent, cases, exclude, outdir = sys.argv[1:]
spec = json.load(open(base))
split = lambda s: [c.strip() for c in s.split(",") if c.strip()]
spec["servers"] = [{"agent": agent, "url": url}]
spec["cases"] = split(cases)
spec["exclude-cases"] = split(exclude)
spec["outdir"] = outdir
if not spec["cases"]:
    print("autobahn.sh: error: --cases is empty", file=sys.stderr)
    sys.exit(2)
json.dump(spec, open(out, "w"), indent=2)
EOF

log "running wstest -m fuzzingclient against $URL (timeout ${RUN_TIMEOUT}s; log: $REPORT_DIR/wstest.log)"
rc=0
py2_argv
# `time` gives wstest's wall and CPU seconds (user + sys of the subshell's children).
TIMEFORMAT='%R %U %S'
{ time (cd "$REPORT_DIR" && timeout --kill-after=30 "$RUN_TIMEOUT" \
   "${PY2_ARGV[@]}" "$USERBASE/bin/wstest" -m fuzzingclient -s "$SPEC" >"$REPORT_DIR/wstest.log" 2>&1) ; } \
   2>"$REPORT_DIR/wstest.time" || rc=$?
if (( rc == 124 || rc == 137 )); then
  tail -20 "$REPORT_DIR/wstest.log" >&2
  die "wstest timed out after ${RUN_TIMEOUT}s"
elif (( rc != 0 )); then
  tail -30 "$REPORT_DIR/wstest.log" >&2
  die "wstest exited with status $rc"
fi
[[ -f "$REPORT_DIR/index.json" ]] || { tail -30 "$REPORT_DIR/wstest.log" >&2; die "wstest wrote no $REPORT_DIR/index.json"; }
report_time
stop_server

rc=0
python3 - "$REPORT_DIR/index.json" "$AGENT" <<'EOF' || rc=$?
import json, sys
index = json.load(open(sys.argv[1]))
agent = sys.argv[2]
if agent not in index:
    print("autobahn.sh: error: agent %r not in index.json (has %s)" % (agent, sorted(index)), file=sys.stderr)
    sys.exit(2)
OK = {"OK", "NON-STRICT", "INFORMATIONAL"}
CLOSE_OK = {"OK", "INFORMATIONAL"}
def key(case_id):
    return [int(p) if p.isdigit() else p for p in case_id.split(".")]
passed = failed = 0
for case_id in sorted(index[agent], key=key):
    r = index[agent][case_id]
    b, bc = r.get("behavior"), r.get("behaviorClose")
    if b in OK and bc in CLOSE_OK:
        passed += 1
    else:
        failed += 1
        print("FAIL %-10s behavior=%s behaviorClose=%s" % (case_id, b, bc))
print("autobahn: %d passed, %d failed" % (passed, failed))
print("report: %s" % sys.argv[1].replace("index.json", "index.html"), file=sys.stderr)
sys.exit(0 if failed == 0 and passed > 0 else 1)
EOF
exit "$rc"
