// Table 3 of the paper, MNIST row: mislabel detection. 1000 MNIST training images, 10% of the
// labels flipped (seeded), the paper's MLP trained on them; each method ranks the training
// samples by its mislabel score -S[i][i] (self-influence; IIF with per-sample baselines, paper
// section 3.3) and is scored by the ROC AUC against the flipped set. Printed beside the paper's
// numbers and written as JSON lines.
//
//   table3_mnist                          the default (and the paper's) scale
//   table3_mnist --flip-seed 7            another draw of the flipped labels
//
// Every option of `iif mislabel` applies (--proj-dim, --damping, --K, --lambda, ...).
#include <omp.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "apps/cli_args.h"
#include "apps/setup.h"
#include "attribution/evaluation.h"
#include "engine/npy.h"
#include "engine/progress.h"

using namespace iif;
using namespace iif::cli;

namespace {

const char kUsage[] = R"(table3_mnist: the paper's Table 3, MNIST row (mislabel-detection ROC AUC)

usage: table3_mnist [options]
  --n-train N (1000)  --data-dir DIR (data/mnist)  --flip X (0.1)  --flip-seed N (2024)
  --methods LIST      comma-separated rows (default if-cg,if-fisher,tracin,trak,iif)
  --out-dir DIR       self-influence .npy files and results (default runs/table3)
  --json FILE         JSON lines (default <out-dir>/table3.jsonl)
  --threads N         OpenMP threads
  and every method option of `iif mislabel --help`. IF (CG) uses the Gauss-Newton matrix with
  --damping 0.01 unless --damping is given (the Hessian of the trained MLP is indefinite).
)";

// The paper's Table 3, MNIST (ROC AUC). Its IF row is an influence function with an iterative
// inverse-Hessian solver (dattri's); IF-Fisher has no paper number.
const std::map<std::string, double> kPaper = {{"if-cg", 0.869}, {"tracin", 0.853},
                                              {"trak", 0.866}, {"iif", 0.885}};

const std::map<std::string, std::string> kLabel = {
    {"if-cg", "IF (CG)"},   {"if-fisher", "IF (Fisher)"}, {"tracin", "TracIn"}, {"trak", "TRAK"},
    {"iif", "IIF"},         {"grad-dot", "Grad-Dot"},     {"grad-cos", "Grad-Cos"},
    {"if-lissa", "IF (LiSSA)"}, {"if-explicit", "IF (explicit)"}};

}  // namespace

int main(int argc, char** argv) {
  try {
    Args a(argc, argv, 1, {"help", "quiet", "gauss-newton", "no-unlearn-stop"});
    if (a.flag("help")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    Setup s = read_setup(a, 1000, 1);
    s.checkpoint.clear();  // theta* must be trained on the flipped labels
    const double flip = a.real("flip", 0.1, 0.0);
    const uint64_t flip_seed = static_cast<uint64_t>(a.integer("flip-seed", 2024, 0));
    const std::vector<std::string> names = split_list(a.str("methods", "if-cg,if-fisher,tracin,trak,iif"));
    const std::string out_dir = a.str("out-dir", "runs/table3");
    const std::string json_path = a.str("json", out_dir + "/table3.jsonl");
    if (a.has("threads")) omp_set_num_threads(static_cast<int>(a.integer("threads", 1, 1)));
    const bool damping_given = a.has("damping");
    std::vector<MethodSetup> setups;
    for (const std::string& n : names) {
      if (!method_names().count(n) || n == "iif-grouped")
        throw UsageError("--methods: unknown method '" + n + "'");
      MethodSetup ms = read_method(a, n);
      if (n == "if-cg" && !damping_given) {
        ms.influence.common.damping = 0.01;
        ms.influence.curvature = attr::Curvature::gauss_newton;
      }
      setups.push_back(ms);
    }
    a.check_all_used();

    attr::LabeledSet train = to_set(load(s, data::Split::train, s.n_train));
    const std::vector<bool> is_flipped = flip_labels(train, flip, flip_seed);
    int64_t n_flip = 0;
    for (bool f : is_flipped) n_flip += f;
    std::printf("Table 3, MNIST row: %lld training images, %lld labels flipped (seed %llu)\n",
                (long long)train.size(), (long long)n_flip, (unsigned long long)flip_seed);

    std::vector<attr::TracInCheckpoint> ckpts;
    int tracin_every = 5;
    for (const MethodSetup& ms : setups)
      if (ms.name == "tracin") tracin_every = ms.tracin_every;
    auto model = get_model(s, train, &ckpts, tracin_every);

    std::filesystem::create_directories(out_dir);
    if (std::filesystem::path(json_path).has_parent_path())
      std::filesystem::create_directories(std::filesystem::path(json_path).parent_path());
    std::ofstream json(json_path, std::ios::app);
    if (!json) throw std::runtime_error("cannot open " + json_path + " for appending");
    struct Result {
      std::string label, method;
      double auc, seconds;
    };
    std::vector<Result> results;
    for (const MethodSetup& ms : setups) {
      Progress clock(ms.name, 1, false);
      auto method = build_method(ms, s, train, ckpts);
      method->fit(*model, train);
      const std::vector<double> self = method->self_influence();
      std::vector<double> score(self.size());
      for (std::size_t i = 0; i < self.size(); ++i) score[i] = -self[i];  // mislabel score = -S[i][i]
      const std::string npy_path = out_dir + "/self-influence-" + ms.name + ".npy";
      npy::save(npy_path, Tensor::from_vector(self, {static_cast<int64_t>(self.size())}, DType::f64));
      const double auc = eval::roc_auc(score, is_flipped);
      const std::string label = kLabel.count(ms.name) ? kLabel.at(ms.name) : ms.name;
      results.push_back({label, ms.name, auc, clock.elapsed()});
      nlohmann::json j = {{"experiment", "table3"}, {"setting", "mnist-mlp"}, {"method", label},
                          {"metric", "mislabel_auc"}, {"value", auc}, {"flipped", n_flip},
                          {"flip_seed", flip_seed}, {"seconds", results.back().seconds},
                          {"self_influence", npy_path}, {"options", describe(ms, s)}};
      if (kPaper.count(ms.name)) j["paper"] = kPaper.at(ms.name);
      json << j.dump() << "\n";
      json.flush();
      std::printf("  %-14s AUC %.4f  (%s)\n", label.c_str(), auc, format_duration(results.back().seconds).c_str());
      std::fflush(stdout);
    }
    std::printf("\nTable 3, MNIST: mislabel-detection ROC AUC (%lld of %lld labels flipped)\n",
                (long long)n_flip, (long long)train.size());
    std::printf("  %-14s %8s %8s %10s\n", "method", "ours", "paper", "time");
    for (const Result& r : results) {
      char paper[16] = "-";
      if (kPaper.count(r.method)) std::snprintf(paper, sizeof paper, "%.3f", kPaper.at(r.method));
      std::printf("  %-14s %8.4f %8s %10s\n", r.label.c_str(), r.auc, paper,
                  format_duration(r.seconds).c_str());
    }
    std::printf("\nJSON lines appended to %s; self-influence vectors in %s\n", json_path.c_str(),
                out_dir.c_str());
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "table3_mnist: %s\n(see table3_mnist --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "table3_mnist: error: %s\n", e.what());
    return 1;
  }
}
