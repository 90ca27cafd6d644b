#!/usr/bin/env bash
# Checks the system tools fffc's build needs (a C++ compiler, npm for the ONNX Runtime
# C API headers; for --target arm the aarch64 cross compiler, and qemu-user for the
# emulated aarch64 test) and installs missing ones from Debian when running as root.
set -euo pipefail
missing=()
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v npm >/dev/null 2>&1 || [ -n "${ORT_INCLUDE_DIR:-}" ] || missing+=(npm)
command -v nm >/dev/null 2>&1 || missing+=(binutils)
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "fffc needs: ${missing[*]} (install them with your package manager)" >&2
  exit 1
fi
