#!/usr/bin/env bash
# An aarch64 Python with onnxruntime and numpy, for running --target arm artifacts under
# qemu-aarch64 on an x86-64 machine (tests/e2e/test_arm.py). Nothing is installed on the
# system: Debian's arm64 packages are unpacked into a private sysroot and PyPI's aarch64
# wheels into a private site dir, both under $FFFC_CACHE_DIR/aarch64 (default
# ~/.cache/fffc/aarch64). Idempotent; prints the directory.
#   usage: scripts/aarch64-sysroot.sh PYTHON   (PYTHON: the x86 interpreter whose
#          onnxruntime and numpy versions the aarch64 side gets)
set -euo pipefail
PY=$("${1:-python3}" -c "import sys; print(sys.executable)")
D=${FFFC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fffc}/aarch64
ORT=$("$PY" -c "import onnxruntime; print(onnxruntime.__version__)")
NP=$("$PY" -c "import numpy; print(numpy.__version__)")
STAMP="$D/.ready-ort$ORT-np$NP"
if [ -f "$STAMP" ]; then echo "$D"; exit 0; fi
rm -rf "$D"
mkdir -p "$D/lists/partial" "$D/archives/partial" "$D/debs" "$D/root" "$D/site" "$D/wheels"
APT=(-qq -o APT::Architecture=arm64 -o APT::Architectures=arm64
     -o "Dir::State::Lists=$D/lists" -o "Dir::Cache::Archives=$D/archives")
apt-get "${APT[@]}" update 2>/dev/null
(cd "$D/debs" && apt-get "${APT[@]}" download python3.11-minimal libpython3.11-minimal \
  libpython3.11-stdlib libc6 zlib1g libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5 \
  libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1 libnsl2 libtirpc3 libcrypt1 \
  libstdc++6 libgcc-s1 libgomp1 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 \
  libcom-err2 libkeyutils1 libdb5.3 2>/dev/null)
for f in "$D"/debs/*.deb; do dpkg -x "$f" "$D/root"; done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
  --implementation cp --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
  --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 -d "$D/wheels" \
  "onnxruntime==$ORT" "numpy==$NP" 2>/dev/null
for w in "$D"/wheels/*.whl; do (cd "$D/site" && "$PY" -m zipfile -e "$w" .); done
# onnxruntime's cpuinfo reads /proc/cpuinfo at load and crashes on the host's x86 one under
# qemu-user: the test bind-mounts this aarch64 one (2 Neoverse-N1 cores) in a private
# mount namespace (unshare -m)
for i in 0 1; do printf 'processor\t: %s\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i"; done > "$D/cpuinfo"
touch "$STAMP"
echo "$D"
