#!/usr/bin/env bash
# System programs the test suite drives for real: nginx (docker/nginx.conf is
# checked with `nginx -t` and run), chromium (browser tests), gettext's msgfmt
# (the compiled Polish catalogue must match its source). Redis and
# PostgreSQL are handled by scripts/test_services.py.
# As root with apt-get, missing ones are installed; otherwise this says what to
# install and the tests that need them fail with the same message.
set -u
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v msgfmt >/dev/null 2>&1 || missing+=(gettext)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "system deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null \
    || echo "system deps: could not install ${missing[*]}; the tests that need them will fail"
else
  echo "system deps: missing ${missing[*]}; install them (Debian: apt-get install ${missing[*]})"
fi
exit 0
