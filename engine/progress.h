// A progress line for long work: what, how far, how long so far and how long left.
// On a terminal it redraws one line; otherwise (CI logs, files) it prints a line at most every
// `interval` seconds and at the end, so logs stay short.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace iif {

class Progress {
 public:
  Progress(std::string what, int64_t total, bool enabled = true, double interval_s = 5.0);
  // `done` units finished; `note` is appended (e.g. "loss 0.231").
  void update(int64_t done, const std::string& note = "");
  void finish(const std::string& note = "");
  double elapsed() const;

 private:
  void print(int64_t done, const std::string& note, bool final_line);
  std::string what_;
  int64_t total_;
  bool enabled_, tty_;
  double interval_;
  std::chrono::steady_clock::time_point start_;
  double last_print_ = -1e9;
};

// "1h02m", "3m05s", "12.3s"
std::string format_duration(double seconds);

}  // namespace iif
