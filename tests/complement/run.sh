#!/bin/sh
# Runs Complement against Palpo; see tests/complement/README.md.
#   tests/complement/run.sh [flags] [packages]      e.g. -run TestLogin csapi
set -e
cd "$(dirname "$0")/../.."
exec go run ./tests/complement/runner "$@"
