#!/bin/sh
# Install radflow into .venv (first time only) and run it with the shipped example config:
# SQLite and the spool under var/, DICOM AE RADFLOW on port 11112, admin on 127.0.0.1:8080.
# The codecs extra comes too: without it compressed images (JPEG, JPEG-LS, JPEG 2000, RLE)
# that a route must decompress would be dead-lettered. Afterwards: .venv/bin/radflow ...
. "$(dirname "$0")/_env.sh"
install_radflow "[codecs]" "[test,codecs]"
exec "$VPY" -m engine run --config "${RADFLOW_CONFIG:-config/radflow.yaml}" "$@"
