#!/bin/sh
# Install what the tests need (DCMTK, Orthanc and its DICOMweb plugin, PostgreSQL from apt when
# missing, Python packages into .venv), check the layer contracts (import-linter, configured in
# pyproject.toml) and run the whole suite, on SQLite and on PostgreSQL. Extra arguments go to
# pytest.
. "$(dirname "$0")/_env.sh"
apt_install dcmtk orthanc orthanc-dicomweb rsyslog rsyslog-gnutls prometheus
# the console tests drive Debian's chromium with Playwright (never `playwright install`)
apt_install chromium
# the scale-out scenario puts HAProxy in front of several radflow nodes, each in a network
# namespace of its own (iproute2), PostgreSQL reached from there through socat
apt_install haproxy iproute2 socat
ensure_postgresql() {
  # The PostgreSQL tests use a server on 127.0.0.1:5432 (trust, database "test"). When none
  # answers, install Debian's, let loopback in without a password (a test machine), start it.
  if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then
    return 0
  fi
  apt_install postgresql postgresql-client
  ver="$(ls /usr/lib/postgresql | sort -n | tail -1)"
  pg_lsclusters -h | grep -q "^$ver main" || as_root pg_createcluster "$ver" main
  hba="/etc/postgresql/$ver/main/pg_hba.conf"
  if ! as_root grep -q "radflow-tests" "$hba"; then
    as_root sh -c "{ echo '# radflow-tests: trust on loopback'; \
      echo 'host all all 127.0.0.1/32 trust'; cat '$hba'; } > '$hba.new' && mv '$hba.new' '$hba'"
    as_root chown postgres:postgres "$hba"
  fi
  as_root pg_ctlcluster "$ver" main start 2>/dev/null || as_root pg_ctlcluster "$ver" main reload
  tries=0
  until pg_isready -q -h 127.0.0.1 -p 5432; do
    tries=$((tries + 1)); [ "$tries" -lt 60 ] || { echo "radflow: PostgreSQL did not start"; exit 1; }
    sleep 1
  done
  as_root runuser -u postgres -- psql -qAtc "SELECT 1 FROM pg_database WHERE datname = 'test'" \
    | grep -q 1 || as_root runuser -u postgres -- createdb test
}
ensure_postgresql
install_radflow "[test,codecs]"
# A broken layer contract fails the run before any test starts (set -e in _env.sh).
"$ROOT/.venv/bin/lint-imports" --no-cache
exec "$VPY" -m pytest -n "${RADFLOW_TEST_WORKERS:-2}" "$@"
