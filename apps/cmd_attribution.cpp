// The attribution subcommands of the iif program: attribute (scores as .npy), lds (LDS against
// retrained subset models, JSON) and mislabel (self-influence ROC AUC on flipped labels, JSON).
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "apps/cli_args.h"
#include "apps/commands.h"
#include "apps/setup.h"
#include "attribution/evaluation.h"
#include "attribution/ground_truth.h"
#include "attribution/iif.h"
#include "attribution/influence.h"
#include "attribution/methods.h"
#include "engine/npy.h"
#include "engine/ops.h"
#include "engine/profile.h"
#include "engine/rng.h"
#include "nn/checkpoint.h"
#include "nn/datasets.h"
#include "nn/trainer.h"

namespace fs = std::filesystem;

namespace iif {
namespace cli {

namespace {

// --profile: the stage table (engine/profile.h) from here to the end of the command, printed
// to stderr (also when the command fails).
class ProfileScope {
 public:
  explicit ProfileScope(bool on) : on_(on) {
    if (on_) profile::enable(true);
  }
  ~ProfileScope() {
    if (!on_) return;
    profile::print_table(stderr);
    profile::enable(false);
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  bool on_;
};

void fit(attr::Method& m, nn::Model& model, const attr::LabeledSet& train) {
  profile::Range stage("fit");
  m.fit(model, train);
}
Tensor score(attr::Method& m, const attr::LabeledSet& test) {
  profile::Range stage("score");
  return m.score(test);
}
std::vector<double> self_influence(attr::Method& m) {
  profile::Range stage("score");
  return m.self_influence();
}

// The Hessian-based IF methods work on exact M-dimensional gradients with host-side CG/LiSSA
// and dense solves (attribution/influence.cpp); they are not wired for device tensors yet.
void require_device_support(const MethodSetup& ms, const Setup& s) {
  if (s.device != Device::cpu() && (ms.name == "if-cg" || ms.name == "if-lissa" || ms.name == "if-explicit"))
    throw UsageError("--method " + ms.name + " runs on --device cpu only (exact gradients and Hessian "
                     "products on the host); the other methods run on " + s.device.str());
}

}  // namespace


int cmd_attribute(const Args& a) {
  const Setup s = read_setup(a, 5000, 1000);
  const MethodSetup ms = read_method(a);
  const std::string out = a.str("out", "runs/scores-" + ms.name + ".npy");
  const bool self = a.flag("self");
  require_device_support(ms, s);
  const ProfileScope prof(a.flag("profile"));
  if (a.has("threads")) omp_set_num_threads(static_cast<int>(a.integer("threads", 1, 1)));
  a.check_all_used();
  const attr::LabeledSet train = to_set(load(s, data::Split::train, s.n_train), s.device);
  std::vector<attr::TracInCheckpoint> ckpts;
  auto model = get_model(s, train, ms.name == "tracin" ? &ckpts : nullptr, ms.tracin_every);
  auto method = build_method(ms, s, train, ckpts);
  fit(*method, *model, train);
  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
  if (self) {
    const std::vector<double> si = self_influence(*method);
    npy::save(out, Tensor::from_vector(si, {static_cast<int64_t>(si.size())}, DType::f64));
    std::printf("self-influence of %zu training samples: %s\n", si.size(), out.c_str());
    return 0;
  }
  const attr::LabeledSet test = load_test(s);
  const Tensor scores = score(*method, test);
  npy::save(out, scores);
  std::printf("scores (%lld train x %lld test, float64): %s\n", (long long)scores.dim(0),
              (long long)scores.dim(1), out.c_str());
  return 0;
}

int cmd_lds(const Args& a) {
  const Setup s = read_setup(a, 5000, 1000);
  const MethodSetup ms = read_method(a);
  const int64_t n_subsets = a.integer("subsets", 100, 2);
  const double alpha = a.real("alpha", 0.5, 0.0);
  const uint64_t subset_seed = static_cast<uint64_t>(a.integer("subset-seed", 12345, 0));
  const std::string cache = a.str("cache-dir", "runs/cache/lds-" + s.data);
  const std::string json = a.str("json", "runs/lds-" + ms.name + ".json");
  const std::string scores_path = a.str("scores", "");
  require_device_support(ms, s);
  const ProfileScope prof(a.flag("profile"));
  if (a.has("threads")) omp_set_num_threads(static_cast<int>(a.integer("threads", 1, 1)));
  a.check_all_used();
  // A saved score matrix (iif attribute --out) must fit the data before any long work starts.
  Tensor given;
  if (!scores_path.empty()) {
    given = npy::load(scores_path);
    if (given.ndim() != 2 || given.dim(0) != s.n_train || given.dim(1) != s.n_test)
      throw std::runtime_error("--scores " + scores_path + ": holds an array of shape " +
                               given.shape().str() + "; expected (n_train, n_test) = (" +
                               std::to_string(s.n_train) + ", " + std::to_string(s.n_test) +
                               ") for these --n-train/--n-test");
  }
  const attr::LabeledSet train = to_set(load(s, data::Split::train, s.n_train), s.device);
  const attr::LabeledSet test = load_test(s);

  // The ground truth (subset models, cached on disk) is trained on the CPU backend whatever
  // --device says: host copies of the data.
  attr::LabeledSet train_h = train, test_h = test;
  train_h.x = train.x.to(Device::cpu());
  test_h.x = test.x.to(Device::cpu());
  eval::Subsets subsets;
  const auto truth = lds_ground_truth(s, train_h, test_h, n_subsets, alpha, subset_seed, cache, subsets);

  std::vector<double> scores;
  if (!scores_path.empty()) {
    scores = given.to_vector();
  } else {
    std::vector<attr::TracInCheckpoint> ckpts;
    auto model = get_model(s, train, ms.name == "tracin" ? &ckpts : nullptr, ms.tracin_every);
    auto method = build_method(ms, s, train, ckpts);
    fit(*method, *model, train);
    scores = score(*method, test).to_vector();
  }
  const eval::LdsResult r = eval::lds(scores, train.size(), test.size(), subsets, truth);
  nlohmann::json j = describe(ms, s);
  j.update({{"metric", "lds"}, {"value", r.lds}, {"n_valid", r.n_valid}, {"subsets", n_subsets},
            {"alpha", alpha}, {"cache", cache}, {"test_offset", s.test_offset}});
  if (!scores_path.empty()) j["scores"] = scores_path;
  write_json(json, j);
  std::printf("%s: LDS %.4f over %lld test samples (%lld subsets of %.0f%%) -> %s\n", ms.name.c_str(),
              r.lds, (long long)r.n_valid, (long long)n_subsets, alpha * 100, json.c_str());
  return 0;
}

int cmd_mislabel(const Args& a) {
  const Setup s = read_setup(a, 1000, 1);
  const MethodSetup ms = read_method(a);
  const double flip = a.real("flip", 0.1, 0.0);
  const uint64_t flip_seed = static_cast<uint64_t>(a.integer("flip-seed", 2024, 0));
  const std::string json = a.str("json", "runs/mislabel-" + ms.name + ".json");
  require_device_support(ms, s);
  const ProfileScope prof(a.flag("profile"));
  if (a.has("threads")) omp_set_num_threads(static_cast<int>(a.integer("threads", 1, 1)));
  a.check_all_used();
  attr::LabeledSet train = to_set(load(s, data::Split::train, s.n_train), s.device);
  const std::vector<bool> is_flipped = flip_labels(train, flip, flip_seed);
  const int64_t n = train.size();
  const int64_t n_flip = static_cast<int64_t>(std::count(is_flipped.begin(), is_flipped.end(), true));
  std::vector<attr::TracInCheckpoint> ckpts;
  Setup s2 = s;
  s2.checkpoint.clear();  // theta* must be trained on the flipped labels
  auto model = get_model(s2, train, ms.name == "tracin" ? &ckpts : nullptr, ms.tracin_every);
  auto method = build_method(ms, s2, train, ckpts);
  fit(*method, *model, train);
  const std::vector<double> self = self_influence(*method);
  std::vector<double> score(self.size());
  for (std::size_t i = 0; i < self.size(); ++i) score[i] = -self[i];  // mislabel score = -S[i][i]
  const double auc = eval::roc_auc(score, is_flipped);
  nlohmann::json j = describe(ms, s2);
  j.update({{"metric", "mislabel_auc"}, {"value", auc}, {"flipped", n_flip}, {"flip_seed", flip_seed}});
  write_json(json, j);
  std::printf("%s: mislabel ROC AUC %.4f (%lld of %lld labels flipped) -> %s\n", ms.name.c_str(), auc,
              (long long)n_flip, (long long)n, json.c_str());
  return 0;
}

}  // namespace cli
}  // namespace iif
