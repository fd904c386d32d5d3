// The attribution subcommands of the iif program: attribute (scores as .npy), lds (LDS against
// retrained subset models, JSON) and mislabel (self-influence ROC AUC on flipped labels, JSON).
#include <omp.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "apps/cli_args.h"
#include "apps/commands.h"
#include "attribution/evaluation.h"
#include "attribution/ground_truth.h"
#include "attribution/iif.h"
#include "attribution/influence.h"
#include "attribution/methods.h"
#include "engine/npy.h"
#include "engine/ops.h"
#include "engine/rng.h"
#include "nn/checkpoint.h"
#include "nn/datasets.h"
#include "nn/trainer.h"

namespace fs = std::filesystem;

namespace iif {
namespace cli {
namespace {

const std::set<std::string> kMethods = {"iif",    "iif-grouped", "if-fisher", "if-cg", "if-lissa",
                                        "if-explicit", "tracin", "trak", "grad-dot", "grad-cos"};

struct Setup {
  std::string data, dir, model_spec;
  int64_t n_train = 5000, n_test = 1000, test_offset = 0;
  nn::TrainConfig recipe;
  std::string checkpoint;  // optional: theta* from a file instead of training
};

// Options shared by every attribution command.
Setup read_setup(const Args& a, int64_t default_train, int64_t default_test) {
  Setup s;
  s.data = a.str("data", "mnist");
  s.dir = a.str("data-dir", "data/" + s.data);
  s.model_spec = a.str("model", s.data == "cifar10" ? "mlp:3072-512-128-10" : "mlp");
  s.n_train = a.integer("n-train", default_train, 1);
  s.n_test = a.integer("n-test", default_test, 1);
  s.test_offset = a.integer("test-offset", 0, 0);
  s.recipe.epochs = static_cast<int>(a.integer("epochs", 50, 1));
  s.recipe.batch = a.integer("batch", 64, 1);
  s.recipe.optimizer = a.str("optimizer", "sgd");
  s.recipe.lr = a.real("lr", 0.01, 0.0);
  s.recipe.momentum = a.real("momentum", 0.9, 0.0);
  s.recipe.seed = static_cast<uint64_t>(a.integer("seed", 0, 0));
  s.recipe.progress = !a.flag("quiet");
  s.checkpoint = a.str("checkpoint", "");
  return s;
}

attr::LabeledSet to_set(const data::Dataset& d) {
  attr::LabeledSet s;
  s.x = d.images;
  s.labels = d.labels;
  s.num_classes = d.num_classes;
  return s;
}

data::Dataset load(const Setup& s, data::Split split, int64_t n) {
  if (s.data == "mnist") return data::load_mnist(s.dir, split, n);
  if (s.data == "cifar10") return data::load_cifar10(s.dir, split, n);
  throw UsageError("--data: unknown dataset '" + s.data + "' (expected mnist or cifar10)");
}

// theta*: loaded from --checkpoint, or trained with the recipe (and its epoch checkpoints kept
// for TracIn when asked).
std::unique_ptr<nn::Mlp> get_model(const Setup& s, const attr::LabeledSet& train,
                                   std::vector<attr::TracInCheckpoint>* tracin_ckpts, int tracin_every) {
  nn::Init init;
  init.seed = s.recipe.seed;
  auto m = nn::make_model(s.model_spec, init);
  if (!s.checkpoint.empty() && !tracin_ckpts) {
    nn::load_checkpoint(s.checkpoint, *m);
    return m;
  }
  nn::TrainConfig c = s.recipe;
  c.what = "train theta*";
  if (tracin_ckpts)
    c.on_epoch_end = [&](int epoch, nn::Mlp& model) {
      if (epoch % tracin_every == 0 || epoch == c.epochs)
        tracin_ckpts->push_back({std::shared_ptr<nn::Mlp>(model.clone()), c.lr});
    };
  nn::train(*m, train.x, ops::one_hot(train.labels, train.num_classes, train.x.dtype(), train.x.device()), c);
  return m;
}

struct MethodSetup {
  std::string name;
  attr::IifOptions iif;
  int trak_models = 10;
  int tracin_every = 5;
  attr::InfluenceOptions influence;
};

MethodSetup read_method(const Args& a) {
  MethodSetup m;
  m.name = a.str("method", "iif");
  if (!kMethods.count(m.name)) {
    std::string list;
    for (auto& k : kMethods) list += (list.empty() ? "" : ", ") + k;
    throw UsageError("--method: unknown method '" + m.name + "' (expected one of " + list + ")");
  }
  attr::MethodOptions& c = m.iif.common;
  c.projector.dim = a.integer("proj-dim", 256, 1);
  c.projector.seed = static_cast<uint64_t>(a.integer("proj-seed", 0, 0));
  const std::string kind = a.str("projector", "rademacher");
  if (kind == "rademacher") c.projector.kind = attr::ProjectionKind::rademacher;
  else if (kind == "gaussian") c.projector.kind = attr::ProjectionKind::gaussian;
  else if (kind == "identity") c.projector.kind = attr::ProjectionKind::identity;
  else throw UsageError("--projector: expected rademacher, gaussian or identity, got '" + kind + "'");
  c.damping = a.real("damping", 1e-3, 0.0);
  c.progress = !a.flag("quiet");
  m.iif.K = static_cast<int>(a.integer("K", 5, 1));
  m.iif.lambda = a.real("lambda", 0.5, 0.0);
  m.iif.unlearn_epochs = static_cast<int>(a.integer("unlearn-epochs", 5, 0));
  m.iif.unlearn_lr = a.real("unlearn-lr", 0.01, 0.0);
  m.iif.unlearn_stop_at_chance = !a.flag("no-unlearn-stop");
  m.iif.path_lr = a.real("path-lr", 0.01, 0.0);
  m.iif.group_size = a.integer("group-size", m.name == "iif-grouped" ? 100 : 1, 1);
  const std::string targets = a.str("path-targets", "true-class");
  if (targets == "true-class") m.iif.targets = attr::PathTargets::true_class;
  else if (targets == "full") m.iif.targets = attr::PathTargets::full_soft;
  else throw UsageError("--path-targets: expected true-class or full, got '" + targets + "'");
  m.iif.self_baseline_lr = a.real("self-baseline-lr", 0.01, 0.0);
  const std::string dir = a.str("baseline", "raise");
  if (dir == "raise") m.iif.baseline_direction = +1;
  else if (dir == "lower") m.iif.baseline_direction = -1;
  else throw UsageError("--baseline: expected raise (unlearn: proponents) or lower (opponents), got '" + dir + "'");
  m.trak_models = static_cast<int>(a.integer("trak-models", 10, 1));
  m.tracin_every = static_cast<int>(a.integer("tracin-every", 5, 1));
  m.influence.common = c;
  m.influence.cg_iters = static_cast<int>(a.integer("cg-iters", 10, 1));
  m.influence.lissa_scale = a.real("lissa-scale", 50.0, 1e-12);
  m.influence.lissa_depth = static_cast<int>(a.integer("lissa-depth", 1000, 1));
  m.influence.lissa_batch = a.integer("lissa-batch", 64, 0);
  if (a.flag("gauss-newton")) m.influence.curvature = attr::Curvature::gauss_newton;
  return m;
}

// Builds the method, training whatever extra models it needs (TRAK's ensemble on random halves).
std::unique_ptr<attr::Method> build_method(const MethodSetup& ms, const Setup& s, const attr::LabeledSet& train,
                                           std::vector<attr::TracInCheckpoint> tracin) {
  const attr::MethodOptions& c = ms.iif.common;
  if (ms.name == "iif" || ms.name == "iif-grouped") return std::make_unique<attr::Iif>(ms.iif);
  if (ms.name == "if-fisher") return attr::make_if_fisher(c);
  if (ms.name == "if-cg" || ms.name == "if-lissa" || ms.name == "if-explicit") {
    attr::InfluenceOptions o = ms.influence;
    o.solver = ms.name == "if-cg" ? attr::IhvpSolver::cg
               : ms.name == "if-lissa" ? attr::IhvpSolver::lissa : attr::IhvpSolver::explicit_matrix;
    return attr::make_influence(o);
  }
  if (ms.name == "grad-dot") return attr::make_grad_dot(c, false);
  if (ms.name == "grad-cos") return attr::make_grad_dot(c, true);
  if (ms.name == "tracin") return attr::make_tracin(c, std::move(tracin));
  // TRAK: each ensemble member trained from scratch on a random half (as dattri does).
  std::vector<std::shared_ptr<nn::Mlp>> ensemble;
  const int64_t n = train.size();
  for (int k = 0; k < ms.trak_models; ++k) {
    const std::vector<int64_t> half = rng::sample_without_replacement(n, n / 2, s.recipe.seed + 77, 1000 + k);
    nn::Init init;
    init.seed = s.recipe.seed + 1 + k;
    std::shared_ptr<nn::Mlp> m(nn::make_model(s.model_spec, init));
    nn::TrainConfig r = s.recipe;
    r.seed = init.seed;
    r.what = "train TRAK model " + std::to_string(k + 1) + "/" + std::to_string(ms.trak_models);
    std::vector<int64_t> labels;
    for (int64_t i : half) labels.push_back(train.labels[i]);
    const Tensor x = ops::gather_rows(train.x, half);
    nn::train(*m, x, ops::one_hot(labels, train.num_classes, x.dtype(), x.device()), r);
    ensemble.push_back(m);
  }
  return attr::make_trak(c, std::move(ensemble));
}

void write_json(const std::string& path, const nlohmann::json& j) {
  if (fs::path(path).has_parent_path()) fs::create_directories(fs::path(path).parent_path());
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << j.dump(2) << "\n";
  fs::rename(tmp, path);
}

nlohmann::json describe(const MethodSetup& ms, const Setup& s) {
  const attr::IifOptions& o = ms.iif;
  nlohmann::json j = {{"method", ms.name}, {"data", s.data}, {"model", s.model_spec},
                      {"n_train", s.n_train}, {"n_test", s.n_test}, {"seed", s.recipe.seed},
                      {"proj_dim", o.common.projector.dim}, {"damping", o.common.damping}};
  if (ms.name.rfind("iif", 0) == 0)
    j.update({{"K", o.K}, {"lambda", o.lambda}, {"unlearn_epochs", o.unlearn_epochs},
              {"unlearn_lr", o.unlearn_lr}, {"path_lr", o.path_lr}, {"group_size", o.group_size}});
  return j;
}

}  // namespace

int cmd_attribute(const Args& a) {
  const Setup s = read_setup(a, 5000, 1000);
  const MethodSetup ms = read_method(a);
  const std::string out = a.str("out", "runs/scores-" + ms.name + ".npy");
  const bool self = a.flag("self");
  if (a.has("threads")) omp_set_num_threads(static_cast<int>(a.integer("threads", 1, 1)));
  a.check_all_used();
  const attr::LabeledSet train = to_set(load(s, data::Split::train, s.n_train));
  std::vector<attr::TracInCheckpoint> ckpts;
  auto model = get_model(s, train, ms.name == "tracin" ? &ckpts : nullptr, ms.tracin_every);
  auto method = build_method(ms, s, train, ckpts);
  method->fit(*model, train);
  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
  if (self) {
    const std::vector<double> si = method->self_influence();
    npy::save(out, Tensor::from_vector(si, {static_cast<int64_t>(si.size())}, DType::f64));
    std::printf("self-influence of %zu training samples: %s\n", si.size(), out.c_str());
    return 0;
  }
  const data::Dataset all_test = load(s, data::Split::test, s.test_offset + s.n_test);
  const attr::LabeledSet test = to_set(all_test.subset([&] {
    std::vector<int64_t> idx;
    for (int64_t j = 0; j < s.n_test; ++j) idx.push_back(s.test_offset + j);
    return idx;
  }()));
  const Tensor scores = method->score(test);
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
  if (a.has("threads")) omp_set_num_threads(static_cast<int>(a.integer("threads", 1, 1)));
  a.check_all_used();
  const attr::LabeledSet train = to_set(load(s, data::Split::train, s.n_train));
  const data::Dataset all_test = load(s, data::Split::test, s.test_offset + s.n_test);
  std::vector<int64_t> tidx;
  for (int64_t j = 0; j < s.n_test; ++j) tidx.push_back(s.test_offset + j);
  const attr::LabeledSet test = to_set(all_test.subset(tidx));

  const eval::Subsets subsets = eval::make_subsets(train.size(), alpha, n_subsets, subset_seed);
  attr::GroundTruthSpec gt;
  gt.model_spec = s.model_spec;
  gt.recipe = s.recipe;
  gt.cache_dir = cache;
  gt.progress = s.recipe.progress;
  const std::string subsets_key = "alpha=" + std::to_string(alpha) + ",seed=" + std::to_string(subset_seed);
  const auto truth = attr::subset_losses(gt, train, test, subsets, subsets_key);

  std::vector<attr::TracInCheckpoint> ckpts;
  auto model = get_model(s, train, ms.name == "tracin" ? &ckpts : nullptr, ms.tracin_every);
  auto method = build_method(ms, s, train, ckpts);
  method->fit(*model, train);
  const std::vector<double> scores = method->score(test).to_vector();
  const eval::LdsResult r = eval::lds(scores, train.size(), test.size(), subsets, truth);
  nlohmann::json j = describe(ms, s);
  j.update({{"metric", "lds"}, {"value", r.lds}, {"n_valid", r.n_valid}, {"subsets", n_subsets},
            {"alpha", alpha}, {"cache", cache}});
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
  if (a.has("threads")) omp_set_num_threads(static_cast<int>(a.integer("threads", 1, 1)));
  a.check_all_used();
  attr::LabeledSet train = to_set(load(s, data::Split::train, s.n_train));
  // Flip round(flip * N) labels, each to a different class drawn uniformly.
  const int64_t n = train.size(), n_flip = static_cast<int64_t>(flip * double(n) + 0.5);
  const std::vector<int64_t> flipped = rng::sample_without_replacement(n, n_flip, flip_seed, 0);
  std::vector<bool> is_flipped(static_cast<std::size_t>(n), false);
  uint64_t index = 0;
  for (int64_t i : flipped) {
    const int64_t shift = 1 + rng::bounded(static_cast<uint64_t>(train.num_classes - 1), flip_seed, 1, index);
    train.labels[i] = (train.labels[i] + shift) % train.num_classes;
    is_flipped[i] = true;
  }
  std::vector<attr::TracInCheckpoint> ckpts;
  Setup s2 = s;
  s2.checkpoint.clear();  // theta* must be trained on the flipped labels
  auto model = get_model(s2, train, ms.name == "tracin" ? &ckpts : nullptr, ms.tracin_every);
  auto method = build_method(ms, s2, train, ckpts);
  method->fit(*model, train);
  const std::vector<double> self = method->self_influence();
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
