// Shared by the benchmarks: the machine's sgemm rate (the peak each line is compared against)
// and JSON-lines output. Lines are held until flush() so every line carries the best sgemm rate
// seen during the whole run (other work on a shared machine only ever lowers a measurement).
#pragma once

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace iif_bench {

inline std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

// The shortest of `reps` (>= 1) wall times of f(), in seconds.
template <class F>
double best_seconds(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// Best of `reps` timings of C = A B for square n, in GFLOP/s; the best time in *seconds.
inline double sgemm_gflops(int n, int reps, double* seconds = nullptr) {
  std::vector<float> a(size_t(n) * n, 1.0f), b(size_t(n) * n, 0.5f), c(size_t(n) * n, 0.0f);
  const double best = best_seconds(reps, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
  });
  if (seconds) *seconds = best;
  return 2.0 * n * n * double(n) / best / 1e9;
}

class JsonLines {
 public:
  // `extra` is appended verbatim inside the object, e.g. ", \"samples_per_second\": 12.5".
  void add(const std::string& what, const std::string& size, double seconds, double gflops,
           const std::string& extra = "") {
    lines_.push_back({what, size, seconds, gflops, extra});
  }
  void note_peak(double gflops) { peak_ = std::max(peak_, gflops); }
  double peak() const { return peak_; }
  void flush() {
    const std::string cpu = cpu_name();
    for (const Line& l : lines_)
      std::printf("{\"what\": \"%s\", \"size\": \"%s\", \"seconds\": %.6f, \"gflops\": %.3f, "
                  "\"peak_gflops\": %.3f, \"threads\": %d, \"cpu\": \"%s\"%s}\n",
                  l.what.c_str(), l.size.c_str(), l.seconds, l.gflops, peak_, omp_get_max_threads(),
                  cpu.c_str(), l.extra.c_str());
    std::fflush(stdout);
    lines_.clear();
  }

 private:
  struct Line {
    std::string what, size;
    double seconds, gflops;
    std::string extra;
  };
  std::vector<Line> lines_;
  double peak_ = 0.0;
};

}  // namespace iif_bench
