#!/usr/bin/env bash
# Memory growth of php-fpm children on real apps, and the throughput cost of
# recycling them (`php.max_requests`), under polyhost (issue 19).
#
#   integration/bench/php-memory/run.sh [measure.py options]
#     --apps wordpress,laravel-like,hello   --only memory,throughput
#     --mem-children 2 --checkpoints 0,100,500,1000,5000,10000
#     --children 4 --max-requests 0,1,500,1000,10000 --conns 16 --duration 10 --reps 3
#   python3 measure.py --report-from results/TIME.json   reprints a run's report (starts nothing)
#
# Installs what is missing (Debian: wordpress, wordpress-theme-twentytwentythree,
# mariadb-server, php8.2-mysql, php8.2-fpm, wrk), builds polyhost in release
# (or uses PHPMEM_BIN), creates the users polyhost-phpmem1..5, starts a
# private MariaDB (own datadir and socket in a temp dir, no networking, no
# systemd), installs a private copy of WordPress into it, generates the
# Laravel-shaped app (app/), then runs measure.py. Everything it starts is
# stopped by PID on exit; the temp dir is removed (PHPMEM_KEEP=1 keeps it).
# Needs root. See README.md.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
source "$REPO/scripts/lib.sh"

if [[ $EUID -ne 0 ]]; then
    echo "phpmem: run as root (it starts MariaDB, polyhost and site users' php-fpm pools)" >&2
    exit 2
fi

PACKAGES=(wordpress wordpress-theme-twentytwentythree mariadb-server php8.2-mysql php8.2-fpm wrk curl)
install_missing phpmem "${PACKAGES[@]}"

if [[ -n ${PHPMEM_BIN:-} ]]; then
    BIN=$PHPMEM_BIN
else
    command -v cargo >/dev/null || { echo "phpmem: cargo not found; install Rust or set PHPMEM_BIN" >&2; exit 2; }
    echo "phpmem: building polyhost (release)"
    (cd "$REPO" && cargo build --release --bin polyhost)
    BIN=$REPO/target/release/polyhost
fi

USERS=()
for i in 1 2 3 4 5; do
    u=polyhost-phpmem$i
    id "$u" >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$u"
    USERS+=("$u")
done

TREE=$(mktemp -d /tmp/polyhost-phpmem.XXXXXX)
chmod 755 "$TREE"
PIDFILE=$TREE/pids
: >"$PIDFILE"
cleanup() {
    # Everything started here or by measure.py, newest first, by PID.
    tac "$PIDFILE" | while read -r pid; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [[ -z ${PHPMEM_KEEP:-} ]]; then rm -rf "$TREE"; else echo "phpmem: kept $TREE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "phpmem: tree $TREE; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# MariaDB: a private instance, socket only.
DB=$TREE/mysql
mkdir -p "$DB/data"
chown -R mysql:mysql "$DB"
chmod 755 "$DB"
mariadb-install-db --no-defaults --datadir="$DB/data" --user=mysql --skip-test-db \
    --auth-root-authentication-method=socket >"$DB/install.log" 2>&1
mariadbd --no-defaults --user=mysql --datadir="$DB/data" --socket="$DB/mysqld.sock" \
    --pid-file="$DB/mysqld.pid" --log-error="$DB/error.log" --skip-networking \
    --innodb-buffer-pool-size=128M >/dev/null 2>&1 &
echo $! >>"$PIDFILE"
for _ in $(seq 300); do
    mariadb-admin --no-defaults -S "$DB/mysqld.sock" -u root ping >/dev/null 2>&1 && break
    sleep 0.1
done
mariadb-admin --no-defaults -S "$DB/mysqld.sock" -u root ping >/dev/null ||
    { echo "phpmem: MariaDB did not start; see $DB/error.log" >&2; cat "$DB/error.log" >&2; exit 1; }
mariadb --no-defaults -S "$DB/mysqld.sock" -u root -e "
    CREATE DATABASE wordpress;
    CREATE USER wp@localhost IDENTIFIED BY 'wp';
    GRANT ALL ON wordpress.* TO wp@localhost;"

# WordPress: a private copy of Debian's (symlinks resolved), our wp-config.php.
cp -rL /usr/share/wordpress "$TREE/wp"
salt=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$TREE/wp/wp-config.php" <<PHP
<?php
// Written by integration/bench/php-memory/run.sh.
define('DB_NAME', 'wordpress');
define('DB_USER', 'wp');
define('DB_PASSWORD', 'wp');
define('DB_HOST', 'localhost:$DB/mysqld.sock');
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
foreach (['AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY', 'AUTH_SALT', 'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT'] as \$k) {
    define(\$k, '$salt' . \$k);
}
\$table_prefix = 'wp_';
define('WP_DEBUG', false);
// No loopback HTTP requests from page views (WP-Cron, update checks): this
// measures page rendering.
define('DISABLE_WP_CRON', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_HTTP_BLOCK_EXTERNAL', true);
if (!defined('ABSPATH')) {
    define('ABSPATH', __DIR__ . '/');
}
require_once ABSPATH . 'wp-settings.php';
PHP
mkdir -p "$TREE/wp/wp-content/mu-plugins"
cp "$HERE/count.php" "$TREE/wp/wp-content/mu-plugins/phpmem-count.php"
php "$HERE/wp-setup.php" "$TREE/wp" wp.bench
chmod -R a+rX "$TREE/wp"

# The Laravel-shaped app: framework, front controller and views from app/,
# the generated application beside them; templates compiled once here.
L=$TREE/laravel
mkdir -p "$L"
cp -r "$HERE/app/framework" "$HERE/app/public" "$HERE/app/views" "$HERE/count.php" "$L/"
php "$HERE/app/gen.php" "$L"
for path in / /posts/1 /api/posts /nope; do
    REQUEST_URI=$path REQUEST_METHOD=GET php -d variables_order=EGPCS "$L/public/index.php" >/dev/null
done
chmod -R a+rX "$L"

mkdir -p "$TREE/hello"
cp "$HERE/count.php" "$TREE/hello/count.php"
printf '<?php\nrequire __DIR__ . "/count.php";\necho "Hello, world!\\n";\n' >"$TREE/hello/index.php"
chmod -R a+rX "$TREE/hello"
mkdir -p "$TREE/counts"
chmod 755 "$TREE/counts"

PHPMEM_TREE=$TREE PHPMEM_BIN=$BIN PHPMEM_PIDFILE=$PIDFILE PHPMEM_USERS=$(IFS=,; echo "${USERS[*]}") \
    /usr/bin/python3 "$HERE/measure.py" "$@"
echo "phpmem: load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
