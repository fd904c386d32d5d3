// LDS ground truth: each subset's losses equal a model trained directly on that subset with the
// documented seed; results are cached per settings and read back instead of recomputed, and a
// run interrupted half way resumes from what it wrote.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <omp.h>
#include <unistd.h>

#include "attribution/evaluation.h"
#include "attribution/ground_truth.h"
#include "engine/ops.h"
#include "nn/datasets.h"

using namespace iif;
namespace fs = std::filesystem;

TEST_CASE("subset losses: direct retraining, cached, and read back from the cache") {
  const auto d = data::load_mnist(std::string(IIF_SOURCE_DIR) + "/data/mnist", data::Split::train, 120);
  attr::LabeledSet train, test;
  train.x = d.images.rows(0, 100);
  train.labels.assign(d.labels.begin(), d.labels.begin() + 100);
  test.x = d.images.rows(100, 120);
  test.labels.assign(d.labels.begin() + 100, d.labels.end());
  const eval::Subsets subsets = eval::make_subsets(100, 0.5, 3, 7);

  attr::GroundTruthSpec spec;
  spec.model_spec = "mlp:784-16-10,dropout=0";
  spec.recipe.epochs = 2;
  spec.recipe.batch = 16;
  spec.recipe.seed = 5;
  spec.progress = false;
  const std::string dir = (fs::temp_directory_path() / ("iif_gt_" + std::to_string(getpid()))).string();
  fs::remove_all(dir);
  spec.cache_dir = dir;
  const auto first = attr::subset_losses(spec, train, test, subsets, "alpha=0.5,seed=7");
  REQUIRE(first.size() == 3);
  REQUIRE(first[0].size() == 20);

  // Subset 1 by hand: the documented seed recipe.seed + 1000003 * m + run.
  nn::Init init;
  init.seed = 5 + 1000003ull * 1;
  auto m = nn::make_model(spec.model_spec, init);
  nn::TrainConfig c = spec.recipe;
  c.seed = init.seed;
  c.progress = false;
  std::vector<int64_t> labels;
  for (int64_t i : subsets[1]) labels.push_back(train.labels[i]);
  // The subset models are trained model-batched, which gives nn::train's bits with one BLAS
  // thread (nn/model_batch.h): the reference runs on one thread.
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  nn::train(*m, ops::gather_rows(train.x, subsets[1]), ops::one_hot(labels, 10, DType::f32, Device::cpu()), c);
  omp_set_num_threads(saved_threads);
  Tensor loss = Tensor::empty({20}, DType::f32);
  ops::softmax_xent(nn::predict(*m, test.x), ops::one_hot(test.labels, 10, DType::f32, Device::cpu()), loss, nullptr);
  const auto want = loss.to_vector();
  for (int j = 0; j < 20; ++j) CHECK(first[1][j] == want[j]);

  // Exactly one results folder, holding one file per subset; a second call reads them back:
  // overwrite subset 2's file with a marker and see the marker come back.
  std::vector<fs::path> folders(fs::directory_iterator(dir), fs::directory_iterator{});
  REQUIRE(folders.size() == 1);
  std::string key;
  {
    std::ifstream f(folders[0] / "key.json");
    key.assign(std::istreambuf_iterator<char>(f), {});
  }
  eval::SubsetCache(folders[0].string(), key).put(2, std::vector<double>(20, 42.0));
  const auto second = attr::subset_losses(spec, train, test, subsets, "alpha=0.5,seed=7");
  CHECK(second[0] == first[0]);
  CHECK(second[2] == std::vector<double>(20, 42.0));

  // Other settings get a folder of their own.
  spec.recipe.epochs = 1;
  attr::subset_losses(spec, train, test, subsets, "alpha=0.5,seed=7");
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}) == 2);
  fs::remove_all(dir);
}
