// NVTX ranges and the stage-time table (see profile.h).
#include "engine/profile.h"

#include <atomic>
#include <chrono>
#include <mutex>

#if defined(IIF_NVTX)
#include <nvtx3/nvToolsExt.h>
#endif

namespace iif {
namespace profile {
namespace {

std::atomic<bool> g_enabled{false};
std::atomic<DeviceClock*> g_clock{nullptr};
std::mutex g_mu;
std::vector<Stage> g_stages;  // guarded by g_mu
std::chrono::steady_clock::time_point g_start;

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void add(const char* name, double seconds) {
  std::lock_guard<std::mutex> lock(g_mu);
  for (Stage& s : g_stages)
    if (s.name == name) {
      ++s.calls;
      s.seconds += seconds;
      return;
    }
  g_stages.push_back({name, 1, seconds});
}

}  // namespace

void set_device_clock(DeviceClock* clock) { g_clock.store(clock); }

void enable(bool on) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    g_stages.clear();
    g_start = std::chrono::steady_clock::now();
  }
  g_enabled.store(on, std::memory_order_relaxed);
}

bool enabled() { return g_enabled.load(std::memory_order_relaxed); }

Range::Range(const char* name) : name_(name) {
#if defined(IIF_NVTX)
  nvtxRangePushA(name);
#endif
  if (g_enabled.load(std::memory_order_relaxed)) {
    timing_ = true;
    if (DeviceClock* c = g_clock.load()) mark_ = c->mark();
    else t0_ = now();
  }
}

Range::~Range() {
  if (timing_) {
    DeviceClock* c = g_clock.load();
    if (mark_ && c) {
      void* end = c->mark();
      add(name_, c->seconds_between(mark_, end));
      c->release(mark_);
      c->release(end);
    } else {
      add(name_, now() - t0_);
    }
  }
#if defined(IIF_NVTX)
  nvtxRangePop();
#endif
}

std::vector<Stage> stages() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_stages;
}

double wall_seconds() {
  std::lock_guard<std::mutex> lock(g_mu);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - g_start).count();
}

void print_table(std::FILE* out) {
  const std::vector<Stage> st = stages();
  const double wall = wall_seconds();
  const bool device = g_clock.load() != nullptr;
  std::fprintf(out, "profile (%s; inclusive times: nested stages also count in the enclosing one)\n",
               device ? "device events" : "steady_clock");
  std::fprintf(out, "  %-16s %8s %12s %12s %8s\n", "stage", "calls", "total s", "mean ms", "% wall");
  for (const Stage& s : st)
    std::fprintf(out, "  %-16s %8lld %12.3f %12.3f %7.1f%%\n", s.name.c_str(), (long long)s.calls, s.seconds,
                 s.calls ? 1e3 * s.seconds / double(s.calls) : 0.0, wall > 0 ? 100.0 * s.seconds / wall : 0.0);
  std::fprintf(out, "  %-16s %8s %12.3f\n", "wall", "", wall);
}

}  // namespace profile
}  // namespace iif
