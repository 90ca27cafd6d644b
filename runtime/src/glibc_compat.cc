// Keeps the shim loadable on glibc 2.35 (Ubuntu 22.04, JetPack 6).
//
// The shim links libstdc++ statically. Its std::runtime_error pulls in the copy-on-write
// string instantiations, which pull in random.o (std::random_device), which references
// arc4random — new in glibc 2.36 on Debian 12's GCC. Nothing in the shim uses
// std::random_device; this local definition resolves the reference at link time so the
// shim's newest glibc symbol is _dl_find_object@2.35 (static libgcc's unwinder).
#include <sys/random.h>

#include <cstdint>
#include <ctime>

extern "C" __attribute__((visibility("hidden"))) uint32_t arc4random(void) {
  uint32_t value = 0;
  if (getrandom(&value, sizeof value, 0) != static_cast<ssize_t>(sizeof value)) {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);  // never reached in practice; not for secrets
    value = static_cast<uint32_t>(ts.tv_nsec) ^ static_cast<uint32_t>(ts.tv_sec);
  }
  return value;
}
