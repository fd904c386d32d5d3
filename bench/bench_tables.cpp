// Wall time of each paper table at its default scale, one JSON line per run: the table program
// run cold (fresh caches in a temporary folder: every subset model and score computed) and then
// warm (the same command again: everything read back from the caches). Long: tens of minutes on
// a laptop CPU; the tables' own output goes to <tmp>/<table>.log.
//   usage: bench_tables [--bin build] [--only table2|table3|linreg] [--quick]
//   --quick runs each table at a small scale (a smoke run of this benchmark, minutes).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include "bench/bench_util.h"

namespace fs = std::filesystem;

namespace {

struct Table {
  std::string name, program, args, quick_args, size;
};

double run(const std::string& cmd) {
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = std::system(cmd.c_str());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (rc != 0) throw std::runtime_error("bench_tables: command failed (status " + std::to_string(rc) + "): " + cmd);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string bin = "build", only;
    bool quick = false;
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--bin" && i + 1 < argc) bin = argv[++i];
      else if (a == "--only" && i + 1 < argc) only = argv[++i];
      else if (a == "--quick") quick = true;
      else {
        std::fprintf(stderr, "usage: bench_tables [--bin build] [--only table2|table3|linreg] [--quick]\n");
        return 2;
      }
    }
    const double peak = iif_bench::sgemm_gflops(1024, 3);
    const fs::path tmp = fs::temp_directory_path() / ("iif_bench_tables_" + std::to_string(::getpid()));
    fs::create_directories(tmp);
    const std::vector<Table> tables = {
        {"table2", "table2", "", "--n-test 20 --subsets 4 --epochs 2 --trak-models 2 --group-size 10",
         "5000 train, 1000 test, 100 subset models"},
        {"table3", "table3", "", "--epochs 2 --trak-models 2", "1000 train, 10% flipped"},
        {"linreg", "linreg_tables", "", "--trials 5", "100 trials x 5000 subsets"},
    };
    for (const Table& t : tables) {
      if (!only.empty() && only != t.name) continue;
      const fs::path dir = tmp / t.name;
      const std::string cmd = bin + "/" + t.program + " " + (quick ? t.quick_args : t.args) +
                              (t.name == "table2" ? " --cache-dir " + (dir / "cache").string() : "") +
                              (t.name == "linreg" ? " --json " + (dir / "out.jsonl").string()
                                                  : " --out-dir " + (dir / "out").string()) +
                              " > " + (tmp / (t.name + ".log")).string() + " 2>&1";
      fs::create_directories(dir);
      for (const char* phase : {"cold", "warm"}) {
        if (t.name == "linreg" && std::string(phase) == "warm") continue;  // nothing cached
        if (t.name == "table3" && std::string(phase) == "warm") continue;  // no cache: same work
        const double s = run(cmd);
        std::printf(
            "{\"what\":\"%s wall time (%s)\",\"size\":\"%s%s\",\"seconds\":%.1f,\"gflops\":null,"
            "\"peak_gflops\":%.1f,\"command\":\"%s\"}\n",
            t.name.c_str(), phase, t.size.c_str(), quick ? " (--quick: reduced)" : "", s,
            peak, (bin + "/" + t.program + " " + (quick ? t.quick_args : t.args)).c_str());
        std::fflush(stdout);
      }
    }
    fs::remove_all(tmp);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tables: %s\n", e.what());
    return 1;
  }
}
