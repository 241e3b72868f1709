#!/usr/bin/env bash
# Helpers shared by the tpu_scripts (sourced, never run on its own).
#
# Every command is echoed as "+ command args" before it runs; with DRY_RUN=1
# (or --dry_run as a script's first argument) it is only echoed.

# Prints a command so that a shell reads it back as the same words.
show() {
  local out="" arg
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+=" ${arg}"
    else
      out+=" '${arg//\'/\'\\\'\'}'"
    fi
  done
  echo "+${out}"
}

# Echoes a command, then runs it unless DRY_RUN=1.
run() {
  show "$@"
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    "$@"
  fi
}

# Prints the usage line (the script's second line) and exits with status 2.
usage() {
  sed -n 2p "$0" >&2
  exit 2
}
