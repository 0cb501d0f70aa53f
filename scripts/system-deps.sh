#!/usr/bin/env bash
# Install the Debian packages MilkGuard needs, only those missing. Called by `make run` and
# `make test`; safe to run again. Needs root or sudo for apt-get.
#   run:  python3 venv support, and mosquitto: `milkguard run` starts it as its broker (without
#         it, the in-process amqtt broker, which loses what it acknowledged when killed)
#   test: the above, plus the real servers the integration tests start on 127.0.0.1:
#         victoria-metrics (speaks the InfluxDB v2 write API),
#         openssl (throwaway CA and certificates for the TLS tests), chromium (the
#         operators' alert page is driven in it, headless, through Playwright) and
#         postgresql (alerting's multi-node database), influxdb (1.x: the dashboards' panel
#         queries run on it)
set -euo pipefail
purpose=${1:-run}

need=()
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "MilkGuard needs Python 3.11 or newer as python3 (found: $(python3 --version 2>&1))." >&2
  exit 1
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# Debian puts it in /usr/sbin, which is not on every user's PATH
[[ -x /usr/sbin/mosquitto ]] || command -v mosquitto >/dev/null || need+=(mosquitto)
if [[ $purpose == test ]]; then
  command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
  command -v openssl >/dev/null || need+=(openssl)
  command -v chromium >/dev/null || need+=(chromium)
  [[ -x /usr/lib/postgresql/15/bin/initdb ]] || need+=(postgresql)
  command -v influxd >/dev/null || [[ -x /usr/bin/influxd ]] || need+=(influxdb)
fi
((${#need[@]})) || exit 0

sudo=()
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null || { echo "installing ${need[*]} needs root or sudo" >&2; exit 1; }
  sudo=(sudo)
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# On a machine running systemd the packages start their own services; the tests start their
# own servers on free ports, and mosquitto's service would hold 127.0.0.1:1883, where
# `make run` starts its own Mosquitto. Stop and disable the ones just installed.
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
  for service in "${need[@]}"; do
    case $service in
      mosquitto|victoria-metrics|postgresql|influxdb) "${sudo[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true ;;
    esac
  done
fi
