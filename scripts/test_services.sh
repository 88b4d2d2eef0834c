# Source me (`. scripts/test_services.sh`) before pytest: starts a private PostgreSQL on
# 127.0.0.1 for the multi-worker tests and exports HARNESS_TEST_POSTGRES_URL.
#
# Sourced by .ci/run under `set -euo pipefail`, so nothing here may abort the caller: the
# work runs in a subshell with its own shell options and prints the URL on success; on
# any failure it says why in one line and the PostgreSQL tests skip themselves.
#
# Why a private cluster (initdb in HARNESS_TEST_PG_DIR, default /tmp/harness-test-postgres)
# rather than Debian's `main`: we own its port, auth and settings, so a `main` cluster that
# is down, busy, on 5432 or configured for someone else cannot break the tests, and ours
# cannot break theirs. It stays up between sourcings; a second sourcing reuses it.

_harness_pg_setup() (
    set +e +u +o pipefail
    cd / || return 1  # the postgres user may not be allowed into the caller's directory

    fail() { echo "test_services.sh: $*; the PostgreSQL tests will be skipped" >&2; exit 1; }

    find_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

    bindir=$(find_bindir)
    if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
        [ "$(id -u)" = 0 ] || fail "PostgreSQL is not installed and installing it needs root"
        command -v apt-get >/dev/null || fail "PostgreSQL is not installed and apt-get is missing"
        apt_log=/tmp/harness-test-postgres-apt.log
        # Lock timeout: another apt run on the machine should delay us, not fail us.
        if ! { DEBIAN_FRONTEND=noninteractive timeout 900 apt-get -qq update \
                && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq \
                    -o DPkg::Lock::Timeout=120 postgresql; } >"$apt_log" 2>&1; then
            fail "apt-get install postgresql failed (log: $apt_log)"
        fi
        bindir=$(find_bindir)
        [ -n "$bindir" ] && [ -x "$bindir/initdb" ] || fail "postgresql installed but no initdb under /usr/lib/postgresql"
    fi

    # postgres refuses to run as root; as root we run it as the `postgres` user the package made.
    if [ "$(id -u)" = 0 ]; then
        owner=postgres
        id postgres >/dev/null 2>&1 || fail "no 'postgres' user to run the server as"
        as_owner() { runuser -u postgres -- "$@"; }
    else
        owner=$(id -un)
        as_owner() { "$@"; }
    fi

    dir=${HARNESS_TEST_PG_DIR:-/tmp/harness-test-postgres}
    case $dir in /*) ;; *) fail "HARNESS_TEST_PG_DIR must be an absolute path, but got '$dir'" ;; esac
    data=$dir/data
    log=$dir/server.log

    # Two shells sourcing this at once (parallel CI jobs, colleagues) must not both initdb.
    exec 9>"$dir.lock" || fail "cannot write the lock file $dir.lock"
    flock -w 120 9 || fail "another setup held $dir.lock for over 120 s"

    if [ ! -e "$dir" ]; then
        mkdir -m 700 "$dir" && chown "$owner" "$dir" || fail "cannot create $dir"
    fi
    # Refuse a directory someone else planted in /tmp: it would hold our password.
    [ -d "$dir" ] && [ ! -L "$dir" ] && [ "$(stat -c %U "$dir")" = "$owner" ] \
        || fail "$dir exists but is not a directory owned by $owner"

    # The marker is written only after a complete initdb, so a half-made cluster is redone.
    if [ ! -e "$dir/initialized" ] || [ ! -e "$data/PG_VERSION" ]; then
        as_owner "$bindir/pg_ctl" status -D "$data" >/dev/null 2>&1 \
            && fail "$data is running but was never fully initialised; stop it or remove $dir"
        rm -rf "$data"
        # Local (socket) trust is safe: the socket lives in $dir, which only $owner can enter.
        as_owner "$bindir/initdb" -D "$data" -U postgres -E UTF8 --no-locale \
            --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
            || fail "initdb failed (log: $dir/initdb.log)"
        touch "$dir/initialized"
    fi

    if ! as_owner "$bindir/pg_ctl" status -D "$data" >/dev/null 2>&1; then
        # First free port from 55432: clear of a Debian cluster on 5432 and of MLflow's 5000.
        port=""
        for candidate in $(seq 55432 55452); do
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
        done
        [ -n "$port" ] || fail "no free port in 55432-55452 on 127.0.0.1"
        # 9>&-: the server outlives us and must not inherit (and hold) the setup lock.
        # fsync off: a throwaway test cluster trades crash safety for fast MLflow migrations.
        as_owner "$bindir/pg_ctl" start -D "$data" -l "$log" -w -t 30 -o "-c listen_addresses=127.0.0.1 \
-c port=$port -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off \
-c full_page_writes=off -c max_connections=200" >/dev/null 2>&1 9>&- \
            || fail "the server did not start within 30 s (log: $log)"
        echo "$port" >"$dir/port"
    fi
    port=$(cat "$dir/port" 2>/dev/null)
    [ -n "$port" ] || fail "the server runs but $dir/port is missing; stop it with pg_ctl -D $data stop"

    ready=""
    for _ in $(seq 1 30); do
        if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" >/dev/null 2>&1; then ready=1; break; fi
        sleep 1
    done
    [ -n "$ready" ] || fail "nothing answers on 127.0.0.1:$port after 30 s (log: $log)"

    # Hex only, so it needs no escaping in SQL or in the URL.
    if [ ! -s "$dir/password" ]; then
        (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$dir/password") \
            || fail "cannot write $dir/password"
    fi
    password=$(cat "$dir/password")

    # CREATEDB: each test makes (and drops) its own database on this server.
    as_owner "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres \
        >"$dir/psql.log" 2>&1 <<SQL || fail "creating role and database 'harness' failed (log: $dir/psql.log)"
SELECT 'CREATE ROLE harness' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'harness')\gexec
ALTER ROLE harness LOGIN CREATEDB PASSWORD '$password';
SELECT 'CREATE DATABASE harness OWNER harness' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'harness')\gexec
SQL

    echo "PostgreSQL for tests listens on 127.0.0.1:$port (data in $data)" >&2
    echo "postgresql+psycopg2://harness:$password@127.0.0.1:$port/harness"
)

if _harness_pg_url=$(_harness_pg_setup); then
    export HARNESS_TEST_POSTGRES_URL=$_harness_pg_url
else
    unset HARNESS_TEST_POSTGRES_URL
fi
unset -f _harness_pg_setup
unset _harness_pg_url
