// The setup shared by the attribution commands and the table programs (see setup.h).
#include "apps/setup.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "attribution/evaluation.h"
#include "attribution/ground_truth.h"
#include "attribution/iif.h"
#include "attribution/influence.h"
#include "engine/ops.h"
#include "engine/progress.h"
#include "engine/rng.h"
#include "nn/checkpoint.h"

namespace fs = std::filesystem;

namespace iif {
namespace cli {


const std::set<std::string>& method_names() {
  static const std::set<std::string> names = {"iif",         "iif-grouped", "if-fisher", "if-cg",
                                              "if-lissa",    "if-explicit", "tracin",    "trak",
                                              "grad-dot",    "grad-cos"};
  return names;
}

namespace {
DeviceResolver g_resolver = nullptr;
}

void set_device_resolver(DeviceResolver resolver) { g_resolver = resolver; }

Device resolve_device(const std::string& name) {
  if (g_resolver) return g_resolver(name);
  if (name == "cpu" || name == "auto") return Device::cpu();
  throw UsageError("--device: this program has no CUDA backend linked (got '" + name + "'; expected cpu)");
}

// Options shared by every attribution command.
Setup read_setup(const Args& a, int64_t default_train, int64_t default_test, int64_t min_test) {
  Setup s;
  s.device = resolve_device(a.str("device", "auto"));
  s.data = a.str("data", "mnist");
  s.dir = a.str("data-dir", "data/" + s.data);
  // The paper's recipes (its Table 5), the defaults of every command: MNIST, the MLP with SGD
  // (lr 0.01, momentum 0.9) for 50 epochs; CIFAR-10, ResNet-9 with Adam (lr 1e-3) for 10.
  const bool cifar = s.data == "cifar10";
  s.model_spec = a.str("model", cifar ? "resnet9" : "mlp");
  s.n_train = a.integer("n-train", default_train, 1);
  s.n_test = a.integer("n-test", default_test, min_test);
  s.test_offset = a.integer("test-offset", 0, 0);
  s.recipe.epochs = static_cast<int>(a.integer("epochs", cifar ? 10 : 50, 1));
  s.recipe.batch = a.integer("batch", 64, 1);
  s.recipe.optimizer = a.str("optimizer", cifar ? "adam" : "sgd");
  s.recipe.lr = a.real("lr", cifar ? 1e-3 : 0.01, 0.0);
  s.recipe.momentum = a.real("momentum", 0.9, 0.0);
  s.recipe.weight_decay = a.real("weight-decay", 0.0, 0.0);
  s.recipe.seed = static_cast<uint64_t>(a.integer("seed", 0, 0));
  s.recipe.progress = !a.flag("quiet");
  s.checkpoint = a.str("checkpoint", "");
  return s;
}

attr::LabeledSet to_set(const data::Dataset& d, Device device) {
  attr::LabeledSet s;
  s.x = d.images.to(device);
  s.labels = d.labels;
  s.num_classes = d.num_classes;
  return s;
}

data::Dataset load(const Setup& s, data::Split split, int64_t n) {
  if (s.data == "mnist") return data::load_mnist(s.dir, split, n);
  if (s.data == "cifar10") return data::load_cifar10(s.dir, split, n);
  throw UsageError("--data: unknown dataset '" + s.data + "' (expected mnist or cifar10)");
}

attr::LabeledSet load_test(const Setup& s) {
  const data::Dataset all = load(s, data::Split::test, s.test_offset + s.n_test);
  std::vector<int64_t> idx;
  for (int64_t j = 0; j < s.n_test; ++j) idx.push_back(s.test_offset + j);
  return to_set(all.subset(idx), s.device);
}

// theta*: loaded from --checkpoint, or trained with the recipe (and its epoch checkpoints kept
// for TracIn when asked).
std::unique_ptr<nn::Model> get_model(const Setup& s, const attr::LabeledSet& train,
                                   std::vector<attr::TracInCheckpoint>* tracin_ckpts, int tracin_every,
                                   const std::string& cache_dir) {
  nn::Init init;
  init.seed = s.recipe.seed;
  init.device = s.device;
  auto m = nn::make_model(s.model_spec, init);
  if (!s.checkpoint.empty() && !tracin_ckpts) {
    nn::load_checkpoint(s.checkpoint, *m);
    return m;
  }
  nn::TrainConfig c = s.recipe;
  c.what = "train theta*";
  // TracIn's epochs: every tracin_every and the last.
  std::vector<int> tracin_epochs;
  if (tracin_ckpts)
    for (int e = 1; e <= c.epochs; ++e)
      if (e % tracin_every == 0 || e == c.epochs) tracin_epochs.push_back(e);
  std::string dir;
  if (!cache_dir.empty()) {
    nlohmann::json key = {{"what", "theta*"}, {"model", s.model_spec}, {"data", s.data},
                          {"train", attr::fingerprint(train.x, train.labels)}, {"recipe", attr::recipe_key(c)}};
    dir = cache_dir + "/theta-" + eval::key_folder(key.dump());
    std::filesystem::create_directories(dir);
    write_json(dir + "/key.json", key);
  }
  const auto epoch_file = [&](int e) { return dir + "/epoch-" + std::to_string(e) + ".safetensors"; };
  const auto load_tracin = [&] {  // the epoch checkpoints from the cache, in order
    for (int e : tracin_epochs) {
      std::shared_ptr<nn::Model> ck(nn::make_model(s.model_spec, init));
      nn::load_checkpoint(epoch_file(e), *ck);
      tracin_ckpts->push_back({ck, c.lr});
    }
  };
  if (!dir.empty() && std::filesystem::exists(dir + "/theta.safetensors")) {
    bool have_all = true;
    for (int e : tracin_epochs) have_all = have_all && std::filesystem::exists(epoch_file(e));
    if (have_all) {
      nn::load_checkpoint(dir + "/theta.safetensors", *m);
      if (tracin_ckpts) load_tracin();
      if (c.progress) std::fprintf(stderr, "theta*: read from %s (trained before with these settings)\n", dir.c_str());
      return m;
    }
  }
  if (!dir.empty()) c.resume_path = dir + "/theta.state";  // an interrupted training resumes
  if (tracin_ckpts)  // into the cache (read back in order below), or kept in memory
    c.on_epoch_end = [&](int epoch, nn::Model& model) {
      if (std::find(tracin_epochs.begin(), tracin_epochs.end(), epoch) == tracin_epochs.end()) return;
      if (!dir.empty())
        nn::save_checkpoint(epoch_file(epoch), model, {{"model", s.model_spec}, {"epoch", std::to_string(epoch)}});
      else
        tracin_ckpts->push_back({std::shared_ptr<nn::Model>(model.clone()), c.lr});
    };
  nn::train(*m, train.x, ops::one_hot(train.labels, train.num_classes, train.x.dtype(), train.x.device()), c);
  if (!dir.empty()) {
    nn::save_checkpoint(dir + "/theta.safetensors", *m, {{"model", s.model_spec}});
    std::filesystem::remove(dir + "/theta.state");
    if (tracin_ckpts) load_tracin();
  }
  return m;
}

MethodSetup read_method(const Args& a) { return read_method(a, a.str("method", "iif")); }

MethodSetup read_method(const Args& a, const std::string& name) {
  MethodSetup m;
  m.name = name;
  if (!method_names().count(m.name)) {
    std::string list;
    for (auto& k : method_names()) list += (list.empty() ? "" : ", ") + k;
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
  m.iif.unlearn_stop_factor = a.real("unlearn-stop", 1.0, 1e-9);
  m.iif.path_lr = a.real("path-lr", 0.01, 0.0);
  m.iif.group_size = a.integer("group-size", m.name == "iif-grouped" ? 100 : 1, 1);
  const std::string grouping = a.str("group-by", "order");
  if (grouping == "class") m.iif.group_by_class = true;
  else if (grouping != "order")
    throw UsageError("--group-by: expected order (consecutive test samples) or class (theta*'s predicted class), got '" + grouping + "'");
  const std::string targets = a.str("path-targets", "true-class");
  if (targets == "true-class") m.iif.targets = attr::PathTargets::true_class;
  else if (targets == "full") m.iif.targets = attr::PathTargets::full_soft;
  else throw UsageError("--path-targets: expected true-class or full, got '" + targets + "'");
  m.iif.self_baseline_lr = a.real("self-baseline-lr", 0.01, 0.0);
  const std::string curv = a.str("path-curvature", "fisher");
  if (curv == "fisher") m.iif.curvature = attr::PathCurvature::fisher;
  else if (curv == "hessian") m.iif.curvature = attr::PathCurvature::hessian;
  else if (curv == "gauss-newton") m.iif.curvature = attr::PathCurvature::gauss_newton;
  else throw UsageError("--path-curvature: expected fisher (the paper's, projected), hessian or gauss-newton, got '" + curv + "'");
  m.iif.cg_iters = static_cast<int>(a.integer("cg-iters", 10, 1));
  m.iif.hessian_damping = a.has("damping") ? c.damping : 0.01;
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
  std::vector<std::shared_ptr<nn::Model>> ensemble;
  const int64_t n = train.size();
  for (int k = 0; k < ms.trak_models; ++k) {
    const std::vector<int64_t> half = rng::sample_without_replacement(n, n / 2, s.recipe.seed + 77, 1000 + k);
    nn::Init init;
    init.seed = s.recipe.seed + 1 + k;
    init.device = s.device;
    std::shared_ptr<nn::Model> m(nn::make_model(s.model_spec, init));
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

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
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
                      {"proj_dim", o.common.projector.dim}, {"damping", o.common.damping},
                      {"recipe", attr::recipe_key(s.recipe)}};
  if (ms.name.rfind("iif", 0) == 0)
    j.update({{"K", o.K}, {"lambda", o.lambda}, {"unlearn_epochs", o.unlearn_epochs},
              {"unlearn_lr", o.unlearn_lr}, {"path_lr", o.path_lr}, {"group_size", o.group_size},
              {"group_by", o.group_by_class ? "class" : "order"},
              {"unlearn_stop_at_chance", o.unlearn_stop_at_chance},
              {"unlearn_stop", o.unlearn_stop_factor},
              {"path_targets", o.targets == attr::PathTargets::true_class ? "true-class" : "full"},
              {"baseline", o.baseline_direction > 0 ? "raise" : "lower"}});
  // Named only when it is not the paper's Fisher, so results and caches of earlier runs keep their keys.
  if (ms.name.rfind("iif", 0) == 0 && o.curvature != attr::PathCurvature::fisher)
    j.update({{"path_curvature", o.curvature == attr::PathCurvature::hessian ? "hessian" : "gauss-newton"},
              {"cg_iters", o.cg_iters}, {"damping", o.hessian_damping}, {"proj_dim", nullptr}});
  if (ms.name == "trak") j["trak_models"] = ms.trak_models;
  if (ms.name == "tracin") j["tracin_every"] = ms.tracin_every;
  if (ms.name == "if-cg" || ms.name == "if-lissa" || ms.name == "if-explicit")
    j.update({{"cg_iters", ms.influence.cg_iters}, {"lissa_scale", ms.influence.lissa_scale},
              {"lissa_depth", ms.influence.lissa_depth}, {"lissa_batch", ms.influence.lissa_batch},
              {"gauss_newton", ms.influence.curvature == attr::Curvature::gauss_newton}});
  if (!s.checkpoint.empty()) j["checkpoint"] = s.checkpoint;
  return j;
}

std::vector<std::vector<double>> lds_ground_truth(const Setup& s, const attr::LabeledSet& train,
                                                  const attr::LabeledSet& test, int64_t n_subsets,
                                                  double alpha, uint64_t subset_seed,
                                                  const std::string& cache_dir, eval::Subsets& subsets) {
  subsets = eval::make_subsets(train.size(), alpha, n_subsets, subset_seed);
  attr::GroundTruthSpec gt;
  gt.model_spec = s.model_spec;
  gt.recipe = s.recipe;
  gt.cache_dir = cache_dir;
  gt.progress = s.recipe.progress;
  const std::string key = "alpha=" + std::to_string(alpha) + ",seed=" + std::to_string(subset_seed);
  return attr::subset_losses(gt, train, test, subsets, key);
}

std::vector<bool> flip_labels(attr::LabeledSet& train, double flip, uint64_t seed) {
  const int64_t n = train.size(), n_flip = static_cast<int64_t>(flip * double(n) + 0.5);
  const std::vector<int64_t> flipped = rng::sample_without_replacement(n, n_flip, seed, 0);
  std::vector<bool> is_flipped(static_cast<std::size_t>(n), false);
  uint64_t index = 0;
  for (int64_t i : flipped) {
    const int64_t shift = 1 + rng::bounded(static_cast<uint64_t>(train.num_classes - 1), seed, 1, index);
    train.labels[i] = (train.labels[i] + shift) % train.num_classes;
    is_flipped[i] = true;
  }
  return is_flipped;
}

Tensor cached_scores(attr::Method& method, const attr::LabeledSet& test, const std::string& dir,
                     nlohmann::json key, int64_t chunk, bool progress, const std::string& what,
                     const std::vector<std::vector<int64_t>>& groups) {
  key["what"] = "scores per test sample";
  key["test_fingerprint"] = attr::fingerprint(test.x, test.labels);
  const std::string k = key.dump();
  eval::SubsetCache cache(dir + "/" + eval::key_folder(k), k);
  const int64_t n_test = test.size();
  Progress bar(what, n_test, progress);
  const auto score_columns = [&](const std::vector<int64_t>& js) {
        attr::LabeledSet part;
        part.x = ops::gather_rows(test.x, js);
        for (int64_t j : js) part.labels.push_back(test.labels[static_cast<std::size_t>(j)]);
        part.num_classes = test.num_classes;
        const Tensor s = method.score(part);  // (n_train, |js|)
        const std::vector<double> v = s.to_vector();
        const int64_t n = s.dim(0), c = s.dim(1);
        std::vector<std::vector<double>> out(static_cast<std::size_t>(c), std::vector<double>(static_cast<std::size_t>(n)));
        for (int64_t i = 0; i < n; ++i)
          for (int64_t q = 0; q < c; ++q) out[q][i] = v[i * c + q];
        return out;
      };
  const auto update = [&](int64_t done, int64_t) { bar.update(done); };
  const auto columns = groups.empty() ? cache.fill_chunked(n_test, chunk, score_columns, update)
                                      : cache.fill_groups(n_test, groups, score_columns, update);
  bar.finish();
  const int64_t n_train = n_test ? static_cast<int64_t>(columns[0].size()) : 0;
  std::vector<double> flat(static_cast<std::size_t>(n_train * n_test));
  for (int64_t j = 0; j < n_test; ++j)
    for (int64_t i = 0; i < n_train; ++i) flat[i * n_test + j] = columns[j][i];
  return Tensor::from_vector(flat, {n_train, n_test}, DType::f64);
}

}  // namespace cli
}  // namespace iif
