#!/bin/sh
# Install what the tests need (DCMTK, Orthanc and its DICOMweb plugin from apt when missing,
# Python packages into .venv), check the layer contracts (import-linter, configured in
# pyproject.toml) and run the whole suite. Extra arguments go to pytest.
. "$(dirname "$0")/_env.sh"
apt_install dcmtk orthanc orthanc-dicomweb rsyslog rsyslog-gnutls prometheus
install_radflow "[test,codecs]"
# A broken layer contract fails the run before any test starts (set -e in _env.sh).
"$ROOT/.venv/bin/lint-imports" --no-cache
exec "$VPY" -m pytest -n "${RADFLOW_TEST_WORKERS:-2}" "$@"
