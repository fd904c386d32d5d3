// What the attribution commands (apps/cmd_attribution.cpp) and the table programs (examples/)
// share: the data and recipe options, theta*, and the methods built from command-line options,
// so `iif lds --method X` and `table2` fit exactly the same method on exactly the same model.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "apps/cli_args.h"
#include "attribution/evaluation.h"
#include "attribution/influence.h"
#include "attribution/iif.h"
#include "attribution/labeled_set.h"
#include "attribution/methods.h"
#include "nn/datasets.h"
#include "nn/models.h"
#include "nn/trainer.h"

namespace iif {
namespace cli {

// --device NAME -> Device. Without an installed resolver only "cpu" and "auto" (= cpu) exist;
// the iif programs install apps/device.cpp's (cuda, cuda-emulated; auto = cuda when a GPU and
// the CUDA backend are there), which also registers the backend it returns.
using DeviceResolver = Device (*)(const std::string& name);
void set_device_resolver(DeviceResolver resolver);
Device resolve_device(const std::string& name);

// --data, --data-dir, --model, --n-train, --n-test, --test-offset, the recipe, --checkpoint,
// --device (data, theta* and every model trained for a method live there).
struct Setup {
  std::string data, dir, model_spec;
  Device device;
  int64_t n_train = 5000, n_test = 1000, test_offset = 0;
  nn::TrainConfig recipe;
  std::string checkpoint;  // optional: theta* from a file instead of training
};
// --data, --data-dir, --model, --n-train, --n-test, --test-offset and the recipe, with the
// paper's recipe for the dataset as defaults (MNIST: the MLP, SGD; CIFAR-10: ResNet-9, Adam).
Setup read_setup(const Args& a, int64_t default_train, int64_t default_test, int64_t min_test = 1);

attr::LabeledSet to_set(const data::Dataset& d, Device device = Device::cpu());
// The first n records of the split of s.data from s.dir.
data::Dataset load(const Setup& s, data::Split split, int64_t n);
// Test records test_offset .. test_offset + n_test - 1.
attr::LabeledSet load_test(const Setup& s);

// theta*: loaded from --checkpoint, or trained with the recipe (and its epoch checkpoints kept
// for TracIn when tracin_ckpts is non-null: every tracin_every epochs and the last). With a
// cache_dir, theta* and those checkpoints are kept under <cache_dir>/theta-<hash of the model,
// data, recipe>/ and read back by a later run with the same settings; an interrupted training
// resumes from its last epoch there.
std::unique_ptr<nn::Model> get_model(const Setup& s, const attr::LabeledSet& train,
                                   std::vector<attr::TracInCheckpoint>* tracin_ckpts, int tracin_every,
                                   const std::string& cache_dir = "");

// --method and every method option (see `iif lds --help`).
struct MethodSetup {
  std::string name;
  attr::IifOptions iif;
  int trak_models = 10;
  int tracin_every = 5;
  attr::InfluenceOptions influence;
};
const std::set<std::string>& method_names();
MethodSetup read_method(const Args& a);
// The same options with the method named `name` (as --method name would give).
MethodSetup read_method(const Args& a, const std::string& name);

// Builds the method, training whatever extra models it needs (TRAK's ensemble on random halves).
std::unique_ptr<attr::Method> build_method(const MethodSetup& ms, const Setup& s,
                                           const attr::LabeledSet& train,
                                           std::vector<attr::TracInCheckpoint> tracin);

// "a,b,,c" -> {"a", "b", "c"} (the --methods lists).
std::vector<std::string> split_list(const std::string& s);

// Writes j to path (parent folders created) through a temporary file and a rename.
void write_json(const std::string& path, const nlohmann::json& j);
// The settings that determine a method's scores, as JSON.
nlohmann::json describe(const MethodSetup& ms, const Setup& s);

// The LDS ground truth of `iif lds` and `table2`: losses[m][j] of the model trained on subset m
// (random fractions alpha, seeded) for test sample j, trained with s's model and recipe, cached
// under cache_dir and resumable (attr::subset_losses). `subsets` receives the subsets.
std::vector<std::vector<double>> lds_ground_truth(const Setup& s, const attr::LabeledSet& train,
                                                  const attr::LabeledSet& test, int64_t n_subsets,
                                                  double alpha, uint64_t subset_seed,
                                                  const std::string& cache_dir, eval::Subsets& subsets);

// Flips round(flip * N) labels of `train` (seeded: which ones, and each to a different class
// drawn uniformly); returns which were flipped. The mislabel-detection setup (DESIGN.md 7).
std::vector<bool> flip_labels(attr::LabeledSet& train, double flip, uint64_t seed);

// Scores (n_train, n_test) of a fitted method on `test`, computed `chunk` test samples at a
// time (a multiple of IIF's group size, so groups stay whole) and cached per test sample under
// <dir>/<hash of key>/ (eval::SubsetCache): a killed run resumes with the samples not yet
// written, and a finished one is read back. `key` must hold everything that determines the
// scores (describe() plus the data's fingerprints: cached_scores adds the test set's).
// With `groups` (a partition of the test samples, e.g. attr::Iif::groups), each group is scored
// in one call and its samples are written as it finishes, in place of chunks of `chunk`.
Tensor cached_scores(attr::Method& method, const attr::LabeledSet& test, const std::string& dir,
                     nlohmann::json key, int64_t chunk, bool progress, const std::string& what,
                     const std::vector<std::vector<int64_t>>& groups = {});

}  // namespace cli
}  // namespace iif
