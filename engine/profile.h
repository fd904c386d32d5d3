// Pipeline-stage profiling: NVTX ranges for Nsight Systems and an optional wall-time table.
//
//   { profile::Range r("featurize"); ... }       // one stage
//   profile::enable(true);  ...  profile::print_table(stderr);   // what `iif ... --profile` does
//
// Every Range is an NVTX push/pop range (nvtx3, header-only, from the CUDA toolkit) when the
// library is built with CUDA enabled (IIF_NVTX); NVTX calls cost a branch when no tool is
// attached. Timing happens only when enabled: per stage name, the number of ranges and their
// inclusive time (nested ranges count in each enclosing one), measured with the registered
// device clock (CUDA events on the CUDA backend: engine/cuda/cuda_backend.cu registers one) or
// std::chrono::steady_clock. When disabled a Range is one relaxed atomic load beyond NVTX.
// Stages used by the engine: "train epoch" (nn/trainer.cpp), "featurize"
// (attribution/featurizer.cpp), "fisher" and "solve" (attribution/curvature.cpp), "fit" and
// "score" (apps/cmd_attribution.cpp); a caller may add its own.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace iif {
namespace profile {

// A clock on a device's stream (elapsed time of the device's work between two marks).
class DeviceClock {
 public:
  virtual ~DeviceClock() = default;
  virtual void* mark() = 0;                                  // records a point, returns its handle
  virtual double seconds_between(void* start, void* end) = 0;  // waits for `end`
  virtual void release(void* mark) = 0;
};
// Registers the clock the table uses (nullptr: steady_clock). The caller keeps it alive.
void set_device_clock(DeviceClock* clock);

void enable(bool on);  // also clears the table and starts the wall clock
bool enabled();

class Range {
 public:
  explicit Range(const char* name);
  ~Range();
  Range(const Range&) = delete;
  Range& operator=(const Range&) = delete;

 private:
  const char* name_;
  bool timing_ = false;
  void* mark_ = nullptr;
  double t0_ = 0.0;
};

struct Stage {
  std::string name;
  int64_t calls = 0;
  double seconds = 0.0;
};
// The stages timed since enable(true), in the order they were first entered.
std::vector<Stage> stages();
// Seconds since enable(true).
double wall_seconds();
// The table: stage, calls, total seconds, mean milliseconds, share of the wall time.
void print_table(std::FILE* out);

}  // namespace profile
}  // namespace iif
