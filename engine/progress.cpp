// Progress line (see engine/progress.h).
#include "engine/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace iif {

std::string format_duration(double s) {
  char buf[32];
  if (!std::isfinite(s) || s < 0) return "?";
  if (s < 60) std::snprintf(buf, sizeof buf, "%.1fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", int(s) / 60, int(s) % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", int(s) / 3600, (int(s) % 3600) / 60);
  return buf;
}

Progress::Progress(std::string what, int64_t total, bool enabled, double interval_s)
    : what_(std::move(what)), total_(total), enabled_(enabled), tty_(isatty(STDERR_FILENO) != 0),
      interval_(tty_ ? 0.2 : interval_s), start_(std::chrono::steady_clock::now()) {}

double Progress::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(int64_t done, const std::string& note) {
  if (!enabled_) return;
  const double t = elapsed();
  if (t - last_print_ < interval_ && done < total_) return;
  last_print_ = t;
  print(done, note, false);
}

void Progress::finish(const std::string& note) {
  if (!enabled_) return;
  print(total_, note, true);
}

void Progress::print(int64_t done, const std::string& note, bool final_line) {
  const double t = elapsed();
  const double frac = total_ > 0 ? double(done) / double(total_) : 1.0;
  const double eta = frac > 0 ? t / frac - t : NAN;
  std::fprintf(stderr, "%s%s: %lld/%lld (%3.0f%%) %s elapsed%s%s%s%s", tty_ ? "\r\033[K" : "",
               what_.c_str(), (long long)done, (long long)total_, 100.0 * frac,
               format_duration(t).c_str(), final_line ? "" : ", ETA ",
               final_line ? "" : format_duration(eta).c_str(), note.empty() ? "" : "  ",
               note.c_str());
  if (!tty_ || final_line) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace iif
