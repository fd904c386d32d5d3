// Table 3 of the paper: mislabel detection, the MNIST row (the paper's MLP) and the CIFAR-10 row
// (ResNet-9). 1000 training images, 10% of the labels flipped (seeded), theta* trained on them
// with the paper's recipe for the dataset; each method ranks the training samples by its
// mislabel score -S[i][i] (self-influence; IIF with per-sample baselines, paper section 3.3) and
// is scored by the ROC AUC against the flipped set. Printed beside the paper's numbers and
// written as JSON lines.
//
//   table3                                 the MNIST row at the paper's scale
//   table3 --data cifar10                  the CIFAR-10 row (ResNet-9, Adam, 10 epochs)
//   table3 --data cifar10 --data-dir DIR   on the official CIFAR-10 binary files
//   table3 --flip-seed 7                   another draw of the flipped labels
//
// Resumable: theta* (and TracIn's epoch checkpoints) and each method's self-influence vector are
// cached under --out-dir, keyed by every setting that determines them; a re-run reads them back
// and a killed run recomputes only what is missing. Every option of `iif mislabel` applies.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "apps/cli_args.h"
#include "apps/setup.h"
#include "attribution/evaluation.h"
#include "attribution/ground_truth.h"
#include "attribution/hvp.h"
#include "engine/npy.h"
#include "engine/ops.h"
#include "engine/progress.h"

using namespace iif;
using namespace iif::cli;

namespace {

const char kUsage[] = R"(table3: the paper's Table 3 (mislabel-detection ROC AUC), MNIST or CIFAR-10 row

usage: table3 [--data mnist|cifar10] [options]
  --data NAME         mnist (the MLP, SGD, 50 epochs) | cifar10 (ResNet-9, Adam 1e-3, 10 epochs)
  --n-train N (1000)  --data-dir DIR (data/<NAME>)  --flip X (0.1)  --flip-seed N (2024)
  --methods LIST      comma-separated rows (default if-cg,if-fisher,tracin,trak,iif)
  --out-dir DIR       caches, self-influence .npy files and results (default runs/table3-<NAME>)
  --json FILE         JSON lines (default <out-dir>/table3.jsonl)
  --threads N         OpenMP threads
  and every option of `iif mislabel --help`. IF (CG) uses the Gauss-Newton matrix with
  --damping 0.01 unless --damping is given (the Hessian of a trained network is indefinite).
  On CIFAR-10, IIF takes lambda = 0 unless --lambda is given (the paper's setting), and IF (CG)
  is run only when its cost, measured from one curvature product, is under --if-budget-hours (1):
  otherwise its row says what it would take.
)";

// The paper's Table 3 (ROC AUC). Its IF row is an influence function with an iterative
// inverse-Hessian solver (dattri's): on CIFAR-10 it ran out of memory. IF-Fisher has no number.
const std::map<std::string, std::map<std::string, double>> kPaper = {
    {"mnist", {{"if-cg", 0.869}, {"tracin", 0.853}, {"trak", 0.866}, {"iif", 0.885}}},
    {"cifar10", {{"tracin", 0.677}, {"trak", 0.728}, {"iif", 0.736}}}};

const std::map<std::string, std::string> kLabel = {
    {"if-cg", "IF (CG)"},   {"if-fisher", "IF (Fisher)"}, {"tracin", "TracIn"}, {"trak", "TRAK"},
    {"iif", "IIF"},         {"grad-dot", "Grad-Dot"},     {"grad-cos", "Grad-Cos"},
    {"if-lissa", "IF (LiSSA)"}, {"if-explicit", "IF (explicit)"}};

using Clock = std::chrono::steady_clock;

// The process's peak resident memory since the last reset (Linux: VmHWM of /proc/self/status,
// reset by writing 5 to /proc/self/clear_refs), in GB; -1 where that is not available.
double peak_rss_gb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / (1024.0 * 1024.0);  // kB
  return -1.0;
}
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

}  // namespace

int main(int argc, char** argv) {
  return iif::cli::run_program("table3", [&]() -> int {
    Args a(argc, argv, 1, {"help", "quiet", "gauss-newton", "no-unlearn-stop"});
    if (a.flag("help")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    Setup s = read_setup(a, 1000, 1);
    s.checkpoint.clear();  // theta* must be trained on the flipped labels
    const bool cifar = s.data == "cifar10";
    const std::string setting = s.data + "-" + s.model_spec.substr(0, s.model_spec.find_first_of(":,"));
    const double flip = a.real("flip", 0.1, 0.0);
    const uint64_t flip_seed = static_cast<uint64_t>(a.integer("flip-seed", 2024, 0));
    const std::vector<std::string> names = split_list(a.str("methods", "if-cg,if-fisher,tracin,trak,iif"));
    const std::string out_dir = a.str("out-dir", "runs/table3-" + s.data);
    const std::string json_path = a.str("json", out_dir + "/table3.jsonl");
    const double if_budget_hours = a.real("if-budget-hours", 1.0, 0.0);
    if (a.has("threads")) omp_set_num_threads(static_cast<int>(a.integer("threads", 1, 1)));
    const bool damping_given = a.has("damping"), lambda_given = a.has("lambda");
    std::vector<MethodSetup> setups;
    for (const std::string& n : names) {
      if (!method_names().count(n) || n == "iif-grouped")
        throw UsageError("--methods: unknown method '" + n + "'");
      MethodSetup ms = read_method(a, n);
      if (n == "if-cg" && !damping_given) {
        ms.influence.common.damping = 0.01;
        ms.influence.curvature = attr::Curvature::gauss_newton;
      }
      if (n == "iif" && cifar && !lambda_given) ms.iif.lambda = 0.0;
      setups.push_back(ms);
    }
    a.check_all_used();

    attr::LabeledSet train = to_set(load(s, data::Split::train, s.n_train), s.device);
    const std::vector<bool> is_flipped = flip_labels(train, flip, flip_seed);
    int64_t n_flip = 0;
    for (bool f : is_flipped) n_flip += f;
    std::printf("Table 3, %s row: %lld training images, %lld labels flipped (seed %llu), %s\n", s.data.c_str(),
                (long long)train.size(), (long long)n_flip, (unsigned long long)flip_seed, s.model_spec.c_str());

    std::vector<attr::TracInCheckpoint> ckpts;
    int tracin_every = 5;
    for (const MethodSetup& ms : setups)
      if (ms.name == "tracin") tracin_every = ms.tracin_every;
    auto model = get_model(s, train, &ckpts, tracin_every, out_dir + "/models");
    const std::string fingerprint = attr::fingerprint(train.x, train.labels);  // the flipped labels

    std::filesystem::create_directories(out_dir);
    if (std::filesystem::path(json_path).has_parent_path())
      std::filesystem::create_directories(std::filesystem::path(json_path).parent_path());
    std::ofstream json(json_path, std::ios::app);
    if (!json) throw std::runtime_error("cannot open " + json_path + " for appending");
    struct Result {
      std::string label, method, note;
      double auc, seconds, peak_gb;
    };
    std::vector<Result> results;
    const auto paper = [&](const std::string& m) -> const double* {
      const auto& row = kPaper.count(s.data) ? kPaper.at(s.data) : std::map<std::string, double>{};
      auto it = row.find(m);
      return it == row.end() ? nullptr : &it->second;
    };
    for (const MethodSetup& ms : setups) {
      const auto start = Clock::now();
      reset_peak_rss();
      const std::string label = kLabel.count(ms.name) ? kLabel.at(ms.name) : ms.name;
      nlohmann::json key = describe(ms, s);
      key["train_fingerprint"] = fingerprint;
      key["flip"] = flip;
      key["flip_seed"] = flip_seed;
      const std::string dir = out_dir + "/self/" + ms.name + "-" + eval::key_folder(key.dump());
      const std::string npy_path = dir + "/self-influence.npy";
      nlohmann::json j = {{"experiment", "table3"}, {"setting", setting}, {"method", label},
                          {"metric", "mislabel_auc"}, {"flipped", n_flip}, {"flip_seed", flip_seed},
                          {"self_influence", npy_path}, {"options", key}};
      if (const double* p = paper(ms.name)) j["paper"] = *p;
      std::vector<double> self;
      if (std::filesystem::exists(npy_path)) {
        self = npy::load(npy_path).to_vector();
        if (static_cast<int64_t>(self.size()) != train.size())
          throw std::runtime_error(npy_path + ": holds " + std::to_string(self.size()) + " values, expected " +
                                   std::to_string(train.size()) + " (one per training image); delete it to recompute");
        std::printf("  %-14s read from %s\n", label.c_str(), npy_path.c_str());
      } else {
        if (ms.name == "if-cg") {
          // N solves of cg_iters curvature products over the N training images each: measured
          // from one product before committing to it.
          std::fprintf(stderr, "%s: timing one curvature product over %lld images to estimate the cost\n",
                       label.c_str(), (long long)train.size());
          const auto t0 = Clock::now();
          attr::HvpOptions h;
          h.curvature = ms.influence.curvature;
          h.batch = 32;  // double backward holds a batch's graph twice over: ResNet-9, ~0.1 GB an image
          const Tensor targets = ops::one_hot(train.labels, train.num_classes, train.x.dtype(), train.x.device());
          const Tensor v = Tensor::zeros({model->num_parameters()}, DType::f32, train.x.device());
          attr::hessian_vector_product(*model, train.x, targets, nn::LossKind::cross_entropy, v, h);
          const double product = std::chrono::duration<double>(Clock::now() - t0).count();
          const double hours = product * double(train.size()) * double(ms.influence.cg_iters) / 3600.0;
          if (hours > if_budget_hours) {
            char note[256];
            std::snprintf(note, sizeof note,
                          "not run: %lld CG solves x %d products of %.1f s each = %.1f h (--if-budget-hours %.1f)",
                          (long long)train.size(), ms.influence.cg_iters, product, hours, if_budget_hours);
            std::printf("  %-14s %s\n", label.c_str(), note);
            j["value"] = nullptr;
            j["note"] = note;
            j["estimated_hours"] = hours;
            json << j.dump() << "\n";
            json.flush();
            results.push_back({label, ms.name, note, std::nan(""), 0.0, peak_rss_gb()});
            continue;
          }
        }
        auto method = build_method(ms, s, train, ckpts);
        method->fit(*model, train);
        self = method->self_influence();
        std::filesystem::create_directories(dir);
        write_json(dir + "/key.json", key);
        npy::save(npy_path, Tensor::from_vector(self, {static_cast<int64_t>(self.size())}, DType::f64));
      }
      std::vector<double> score(self.size());
      for (std::size_t i = 0; i < self.size(); ++i) score[i] = -self[i];  // mislabel score = -S[i][i]
      const double auc = eval::roc_auc(score, is_flipped);
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      results.push_back({label, ms.name, "", auc, seconds, peak_rss_gb()});
      j["value"] = auc;
      j["seconds"] = seconds;
      j["peak_rss_gb"] = results.back().peak_gb;
      json << j.dump() << "\n";
      json.flush();
      std::printf("  %-14s AUC %.4f  (%s, peak memory %.1f GB)\n", label.c_str(), auc, format_duration(seconds).c_str(),
                  results.back().peak_gb);
      std::fflush(stdout);
    }
    std::printf("\nTable 3, %s: mislabel-detection ROC AUC (%lld of %lld labels flipped)\n", setting.c_str(),
                (long long)n_flip, (long long)train.size());
    std::printf("  %-14s %8s %8s %10s %9s\n", "method", "ours", "paper", "time", "peak GB");
    for (const Result& r : results) {
      char ours[16] = "-", p[16] = "-";
      if (r.note.empty()) std::snprintf(ours, sizeof ours, "%.4f", r.auc);
      if (const double* v = paper(r.method)) std::snprintf(p, sizeof p, "%.3f", *v);
      else if (cifar && r.method == "if-cg") std::snprintf(p, sizeof p, "OOM");
      std::printf("  %-14s %8s %8s %10s %9.1f%s%s\n", r.label.c_str(), ours, p, format_duration(r.seconds).c_str(),
                  r.peak_gb, r.note.empty() ? "" : "  ", r.note.c_str());
    }
    std::printf("\nJSON lines appended to %s; caches and self-influence vectors under %s\n", json_path.c_str(),
                out_dir.c_str());
    return 0;
  });
}
