/* bench/copies: counts the bytes each call site hands to memcpy/memmove.
 *
 * Preloaded into a proxy (LD_PRELOAD). Counting starts at SIGWINCH and stops at SIGUSR2 (the
 * handlers only flip a flag); the table is written at exit to $TRELLIS_COPIES_DIR/<pid>, one
 * line per call site: calls, bytes, object, offset of the return address in that object. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef void *(*copy_fn)(void *, const void *, size_t);
static copy_fn real_memcpy, real_memmove;

#define SITES 8192
static struct { void *at; unsigned long calls, bytes; } sites[SITES];
static volatile sig_atomic_t counting;

static void count(void *at, size_t n) {
  if (!counting) return;
  uintptr_t h = ((uintptr_t)at >> 2) % SITES;
  for (int i = 0; i < SITES; i++) {
    int j = (h + i) % SITES;
    void *seen = __atomic_load_n(&sites[j].at, __ATOMIC_RELAXED);
    if (seen == 0) {
      void *none = 0;
      if (!__atomic_compare_exchange_n(&sites[j].at, &none, at, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED) && none != at) continue;
    } else if (seen != at) {
      continue;
    }
    __atomic_add_fetch(&sites[j].calls, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&sites[j].bytes, n, __ATOMIC_RELAXED);
    return;
  }
}

/* dlsym may copy before it has answered: a plain loop until then. */
static void *slow_move(void *d, const void *s, size_t n) {
  unsigned char *dd = d;
  const unsigned char *ss = s;
  if (dd < ss) for (size_t i = 0; i < n; i++) dd[i] = ss[i];
  else for (size_t i = n; i > 0; i--) dd[i - 1] = ss[i - 1];
  return d;
}

static void resolve(void) {
  static volatile int busy;
  if (busy) return;
  busy = 1;
  real_memcpy = (copy_fn)dlsym(RTLD_NEXT, "memcpy");
  real_memmove = (copy_fn)dlsym(RTLD_NEXT, "memmove");
  busy = 0;
}

void *memcpy(void *d, const void *s, size_t n) {
  if (!real_memcpy) { resolve(); if (!real_memcpy) return slow_move(d, s, n); }
  count(__builtin_return_address(0), n);
  return real_memcpy(d, s, n);
}

void *memmove(void *d, const void *s, size_t n) {
  if (!real_memmove) { resolve(); if (!real_memmove) return slow_move(d, s, n); }
  count(__builtin_return_address(0), n);
  return real_memmove(d, s, n);
}

static void start(int sig) { (void)sig; counting = 1; }
static void stop(int sig) { (void)sig; counting = 0; }

__attribute__((constructor)) static void init(void) {
  resolve();
  signal(SIGWINCH, start);
  signal(SIGUSR2, stop);
}

__attribute__((destructor)) static void report(void) {
  counting = 0;
  const char *dir = getenv("TRELLIS_COPIES_DIR");
  if (!dir) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/%d", dir, (int)getpid());
  FILE *out = fopen(path, "w");
  if (!out) return;
  for (int i = 0; i < SITES; i++) {
    if (!sites[i].at) continue;
    Dl_info info;
    uintptr_t offset = 0;
    const char *object = "?";
    if (dladdr(sites[i].at, &info) && info.dli_fname) {
      offset = (uintptr_t)sites[i].at - (uintptr_t)info.dli_fbase;
      object = info.dli_fname;
    }
    fprintf(out, "%lu %lu %s 0x%lx\n", sites[i].calls, sites[i].bytes, object, (unsigned long)offset);
  }
  fclose(out);
}
