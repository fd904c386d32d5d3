// The host SIMT emulator's launch interface: per-launch options (fiber schedule order, worker
// threads, stack size, shared-memory limit), the launch entry point and launch statistics.
// Kernels reach it through kernels/simt/simt.cuh; the fibers and scheduler are in runtime.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernels/simt/vocabulary.h"

namespace simt {

// The order in which the scheduler resumes a block's fibers in every round. A kernel that is
// free of schedule-dependent races gives bitwise-equal outputs in all of them.
enum class Schedule { forward, reversed, random };
const char* schedule_name(Schedule s);

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr std::size_t kDefaultStackBytes = 512 * 1024;
#else
constexpr std::size_t kDefaultStackBytes = 128 * 1024;
#endif

struct Options {
  Schedule schedule = Schedule::forward;
  std::uint64_t seed = 0;  // for Schedule::random: each (seed, block) has its own permutations
  int workers = 0;         // OS threads running blocks; 0 = $SIMT_WORKERS or the core count
  std::size_t stack_bytes = kDefaultStackBytes;          // per CUDA thread, plus a guard page
  std::size_t max_dynamic_shared_bytes = 48 * 1024;      // CUDA's limit without an opt-in
};

// Process-wide defaults for the launches that follow (thread-safe).
Options options();
void set_options(const Options& o);
void set_schedule(Schedule s, std::uint64_t seed = 0);

// Sets options for a scope and restores the previous ones.
class ScopedOptions {
 public:
  explicit ScopedOptions(const Options& o) : saved_(options()) { set_options(o); }
  ~ScopedOptions() { set_options(saved_); }
  ScopedOptions(const ScopedOptions&) = delete;
  ScopedOptions& operator=(const ScopedOptions&) = delete;

 private:
  Options saved_;
};

// What the last launch made on this host thread did (for benchmarks and tests).
struct LaunchStats {
  std::uint64_t blocks = 0;
  std::uint64_t resumes = 0;  // fiber resumptions: each is two context switches
  std::uint64_t rounds = 0;   // scheduler rounds summed over blocks
  int workers = 0;            // OS threads that ran blocks
};
LaunchStats last_launch_stats();

// A launch's grid, carrying the caller's file:line for launch-configuration errors.
struct Grid {
  dim3 dims;
  detail::Site site;
  Grid(dim3 d, const char* file = __builtin_FILE(), int line = __builtin_LINE())
      : dims(d), site{file, line} {}
  Grid(unsigned int x, const char* file = __builtin_FILE(), int line = __builtin_LINE())
      : dims(x), site{file, line} {}
};

namespace detail {

struct LaunchSpec {
  dim3 grid, block;
  std::size_t smem_bytes;
  Site site;
  void (*invoke)(void*);
  void* packed;
};
// Runs every block to completion (synchronous); throws std::runtime_error on a bad launch
// configuration, barrier divergence, a deadlock, or an exception from the kernel.
void run(const LaunchSpec& spec);

template <class... P>
struct Packed {
  void (*kernel)(P...);
  std::tuple<std::decay_t<P>...> args;
  static void invoke(void* p) {
    auto* self = static_cast<Packed*>(p);
    std::apply(self->kernel, self->args);  // each CUDA thread gets its own copies of the args
  }
};

}  // namespace detail

// kernel<<<grid, block, smem_bytes, stream>>>(args...) on the emulator. Synchronous; the
// stream is accepted for source compatibility and ignored.
template <class... P, class Stream, class... A>
void launch(void (*kernel)(P...), Grid grid, dim3 block, std::size_t smem_bytes, Stream /*stream*/,
            A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "simt::launch: wrong number of kernel arguments");
  detail::Packed<P...> packed{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  detail::run({grid.dims, block, smem_bytes, grid.site, &detail::Packed<P...>::invoke, &packed});
}

}  // namespace simt

// Dynamic shared memory: `SIMT_DYNAMIC_SHARED(float, tile);` declares `float* tile` pointing at
// the launch's smem_bytes (aligned to 16 bytes; filled with 0xFF bytes, NaN as floats, at the
// start of every block so a read before any write shows up).
#define SIMT_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::simt::detail::dynamic_shared())
