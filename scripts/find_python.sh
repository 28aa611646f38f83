#!/usr/bin/env bash
# Print the path of an installed Python that this project supports, or explain on stderr and exit 1.
# Supported: what Ray 2.60 and every dependency ship for (3.10-3.14); tested on 3.11, tried first.
# Usage: scripts/find_python.sh [CANDIDATE...]   (default: python3.11 python3.12 python3.13 python3.10 python3.14 python3)
set -u
MIN=10 MAX=14
candidates=("$@")
[ ${#candidates[@]} -gt 0 ] || candidates=(python3.11 python3.12 python3.13 python3.10 python3.14 python3)
tried=()
for c in "${candidates[@]}"; do
  command -v "$c" >/dev/null 2>&1 || { tried+=("$c: not found"); continue; }
  # a pyenv shim exists for every version pyenv knows but runs only the selected one: run it to know
  v=$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || { tried+=("$c: does not run"); continue; }
  minor=${v#3.}
  if [ "${v%%.*}" = 3 ] && [ "$minor" -ge $MIN ] && [ "$minor" -le $MAX ]; then
    command -v "$c"
    exit 0
  fi
  tried+=("$c: Python $v")
done
{
  echo "signalgen needs Python 3.$MIN to 3.$MAX (Ray 2.60's range; tested on 3.11), and none was found:"
  printf '  %s\n' "${tried[@]}"
  echo "Install one (e.g. apt-get install python3.11-venv, or pyenv install 3.11) or point make at it: make run PY_SYS=/path/to/python3.x"
} >&2
exit 1
