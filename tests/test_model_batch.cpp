// Model-batched training (nn/model_batch.h) and its batched ops: each batched op against a plain
// loop oracle and against the unbatched op slice by slice; B MLPs trained at once against B
// separate nn::train runs on real MNIST subsets (bitwise); shape errors.
#include <doctest/doctest.h>

#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/ops.h"
#include "engine/rng.h"
#include "kernels/philox.cuh"
#include "nn/datasets.h"
#include "nn/model_batch.h"
#include "nn/trainer.h"
#include "test_util.h"

using namespace iif;
using iif_test::error_of;
using iif_test::has;

namespace {

template <class T>
constexpr DType dtype_of = std::is_same<T, float>::value ? DType::f32 : DType::f64;

Tensor rnd(const Shape& s, DType dt, uint64_t stream) {
  std::vector<double> v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 2.0 * philox::uniform(0xBA7C4, stream, i) - 1.0;
  return Tensor::from_vector(v, s, dt);
}

Tensor slice(const Tensor& t, int64_t k) {
  std::vector<int64_t> d = t.shape().vec();
  d.erase(d.begin());
  return t.rows(k, k + 1).reshape(Shape(d));
}

// Runs f with OpenMP (and so OpenBLAS) on `n` threads, then restores the thread count.
template <class F>
void with_threads(int n, F&& f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(n);
  f();
  omp_set_num_threads(saved);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// gemm_batched against a float64 triple loop, for every transpose combination. Tolerance
// (Higham eq. 3.5): an inner product of length K plus the alpha and beta terms is within
// gamma_{K+2} <= (K+2) eps of the exact value relative to the magnitudes summed, so per entry
//   |got - ref| <= (K+2) eps (|alpha| sum_k |a_ik b_kj| + |beta c_ij|),
// eps of the storage type (the oracle's float64 rounding is far below that for float32 and
// covered by the factor for float64).
template <class T>
void check_gemm_batched(int64_t batch, int64_t m, int64_t n, int64_t k, bool shared_a,
                        bool shared_b) {
  const DType dt = dtype_of<T>;
  const double alpha = 0.75, beta = -0.5;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      CAPTURE(ta);
      CAPTURE(tb);
      const Shape sa = ta ? Shape{k, m} : Shape{m, k}, sb = tb ? Shape{n, k} : Shape{k, n};
      const Tensor a = shared_a ? rnd(sa, dt, 1) : rnd(Shape{batch, sa[0], sa[1]}, dt, 1);
      const Tensor b = shared_b ? rnd(sb, dt, 2) : rnd(Shape{batch, sb[0], sb[1]}, dt, 2);
      Tensor c = rnd({batch, m, n}, dt, 3);
      const std::vector<double> av = a.to_vector(), bv = b.to_vector(), c0 = c.to_vector();
      ops::gemm_batched(ta, tb, alpha, a, b, beta, c);
      const std::vector<double> got = c.to_vector();
      const double eps = std::numeric_limits<T>::epsilon();
      int bad = 0;
      double worst = 0.0;
      for (int64_t q = 0; q < batch; ++q)
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double s = 0.0, mass = 0.0;
            for (int64_t p = 0; p < k; ++p) {
              const int64_t ia = (shared_a ? 0 : q * m * k) + (ta ? p * m + i : i * k + p);
              const int64_t ib = (shared_b ? 0 : q * k * n) + (tb ? j * k + p : p * n + j);
              s += av[ia] * bv[ib];
              mass += std::fabs(av[ia] * bv[ib]);
            }
            const int64_t ic = (q * m + i) * n + j;
            const double ref = alpha * s + beta * c0[ic];
            const double tol = double(k + 2) * eps * (std::fabs(alpha) * mass + std::fabs(beta * c0[ic]));
            const double err = std::fabs(got[ic] - ref);
            worst = std::max(worst, err);
            if (!(err <= tol) && bad++ < 5)
              FAIL_CHECK("C[" << q << "," << i << "," << j << "] = " << got[ic] << ", want " << ref
                              << " (tol " << tol << ")");
          }
      CHECK_MESSAGE(bad == 0, bad << " mismatches, max error " << worst);

      // Slice k equals the unbatched op on slice k run on one thread, bit for bit (the same
      // single-threaded cblas call), and the result does not depend on the thread count.
      Tensor c2 = rnd({batch, m, n}, dt, 3), c1 = rnd({batch, m, n}, dt, 3);
      with_threads(2, [&] { ops::gemm_batched(ta, tb, alpha, a, b, beta, c2); });
      with_threads(1, [&] { ops::gemm_batched(ta, tb, alpha, a, b, beta, c1); });
      CHECK(same_bits(c1, c2));
      for (int64_t q = 0; q < batch; ++q) {
        Tensor cq = rnd({batch, m, n}, dt, 3);
        Tensor one = slice(cq, q).clone();
        with_threads(1, [&] {
          ops::gemm(ta, tb, alpha, shared_a ? a : slice(a, q), shared_b ? b : slice(b, q), beta, one);
        });
        CHECK(same_bits(one, slice(c2, q)));
      }
    }
}

const std::string kMnist = std::string(IIF_SOURCE_DIR) + "/data/mnist";

}  // namespace

TEST_CASE("gemm_batched equals a plain loop and ops::gemm per slice") {
  SUBCASE("float32, odd sizes") { check_gemm_batched<float>(5, 7, 13, 11, false, false); }
  SUBCASE("float64, odd sizes") { check_gemm_batched<double>(5, 7, 13, 11, false, false); }
  SUBCASE("float32, B = 1") { check_gemm_batched<float>(1, 9, 3, 17, false, false); }
  SUBCASE("float64, B = 1") { check_gemm_batched<double>(1, 9, 3, 17, false, false); }
  SUBCASE("shared A (stride 0)") { check_gemm_batched<float>(4, 6, 5, 9, true, false); }
  SUBCASE("shared B (stride 0)") { check_gemm_batched<double>(4, 6, 5, 9, false, true); }
  SUBCASE("sizes 1") { check_gemm_batched<float>(3, 1, 1, 1, false, false); }
  SUBCASE("the MLP's first layer (64 x 784 x 128), float32") {
    check_gemm_batched<float>(3, 64, 128, 784, false, false);
  }
}

TEST_CASE("gemm_batched: K = 0, empty batch, empty slices") {
  // K = 0: C = beta C; with beta = 0 C is not read (NaN on entry becomes 0).
  Tensor c = Tensor::full({2, 3, 4}, std::nan(""), DType::f32);
  ops::gemm_batched(false, false, 1.0, Tensor::zeros({2, 3, 0}), Tensor::zeros({2, 0, 4}), 0.0, c);
  for (double v : c.to_vector()) CHECK(v == 0.0);
  Tensor c2 = Tensor::full({2, 3, 4}, 2.0, DType::f64);
  ops::gemm_batched(false, false, 1.0, Tensor::zeros({3, 0}, DType::f64),
                    Tensor::zeros({2, 0, 4}, DType::f64), 0.5, c2);
  for (double v : c2.to_vector()) CHECK(v == 1.0);
  Tensor e = Tensor::zeros({0, 3, 4});
  ops::gemm_batched(false, true, 1.0, Tensor::zeros({0, 3, 5}), Tensor::zeros({0, 4, 5}), 0.0, e);
  Tensor m0 = Tensor::zeros({2, 0, 4});
  ops::gemm_batched(false, false, 1.0, Tensor::zeros({2, 0, 5}), Tensor::zeros({2, 5, 4}), 0.0, m0);
}

TEST_CASE("batched bias, bias-gradient and dropout ops equal the unbatched ops slice by slice") {
  for (DType dt : {DType::f32, DType::f64})
    for (Shape s : {Shape{3, 5, 7}, Shape{1, 1, 1}, Shape{4, 64, 129}}) {  // the last takes OpenMP paths
      CAPTURE(s.str());
      const int64_t batch = s[0], cols = s[2];
      const Tensor v = rnd({batch, cols}, dt, 4);
      const Tensor y0 = rnd(s, dt, 5);
      Tensor y = y0.clone();
      ops::add_row_vector_batched(v, y);
      Tensor out = rnd({batch, cols}, dt, 6);
      const Tensor out0 = out.clone();
      ops::sum_rows_batched(y0, 0.5, out);
      for (int64_t k = 0; k < batch; ++k) {
        Tensor yk = slice(y0, k).clone();
        ops::add_row_vector(slice(v, k), yk);
        CHECK(same_bits(yk, slice(y, k)));
        Tensor ok = slice(out0, k).clone();
        ops::sum_rows(slice(y0, k), 0.5, ok);
        CHECK(same_bits(ok, slice(out, k)));
      }
      // Dropout: slice k from (seed k, stream k), indices counted from the slice start; the
      // per-slice size 5*7 = 35 is not a multiple of the 4 words of a Philox block.
      std::vector<uint64_t> seeds, streams;
      for (int64_t k = 0; k < batch; ++k) {
        seeds.push_back(1000 + 7 * k);
        streams.push_back((uint64_t(k % 2) << 32) + 3 * k);
      }
      Tensor mask = Tensor::empty(s, dt);
      ops::dropout_mask_batched_into(mask, 0.3, seeds, streams);
      for (int64_t k = 0; k < batch; ++k)
        CHECK(same_bits(ops::dropout_mask({s[1], s[2]}, dt, Device::cpu(), 0.3, seeds[k], streams[k]),
                        slice(mask, k)));
    }
}

TEST_CASE("batched ops reject mismatched shapes, dtypes and counts") {
  const Tensor a = Tensor::zeros({2, 3, 4}), b = Tensor::zeros({2, 4, 5});
  Tensor c = Tensor::zeros({2, 3, 5});
  CHECK(has(error_of([&] { ops::gemm_batched(false, false, 1, a, Tensor::zeros({2, 5, 5}), 0, c); }),
            "does not give C_k"));
  CHECK(has(error_of([&] { ops::gemm_batched(false, false, 1, a, Tensor::zeros({3, 4, 5}), 0, c); }),
            "batch sizes"));
  CHECK(has(error_of([&] { ops::gemm_batched(true, false, 1, a, b, 0, c); }), "(4, 3)"));
  Tensor c2 = Tensor::zeros({3, 5});
  CHECK(has(error_of([&] { ops::gemm_batched(false, false, 1, a, b, 0, c2); }), "(3, 5)"));
  CHECK(has(error_of([&] { ops::gemm_batched(false, false, 1, Tensor::zeros({4}), b, 0, c); }),
            "(batch, rows, cols)"));
  CHECK(has(error_of([&] { ops::gemm_batched(false, false, 1, a, b.to(DType::f64), 0, c); }),
            "float"));
  Tensor y = Tensor::zeros({2, 3, 5});
  CHECK(has(error_of([&] { ops::add_row_vector_batched(Tensor::zeros({2, 4}), y); }), "(2, 4)"));
  CHECK(has(error_of([&] { ops::add_row_vector_batched(Tensor::zeros({3, 5}), y); }), "(3, 5)"));
  Tensor o = Tensor::zeros({2, 4});
  CHECK(has(error_of([&] { ops::sum_rows_batched(y, 0, o); }), "(2, 4)"));
  Tensor m = Tensor::zeros({2, 3});
  CHECK(has(error_of([&] { ops::dropout_mask_batched_into(m, 0.1, {1}, {1, 2}); }), "1 seeds"));
  CHECK(has(error_of([&] { ops::dropout_mask_batched_into(m, 1.0, {1, 2}, {1, 2}); }), "[0, 1)"));
  Tensor g = Tensor::zeros({2, 2, 4});
  CHECK(has(error_of([&] { ops::gather_rows_into(Tensor::zeros({10, 4}), {0, 1, 2}, g); }),
            "do not fill"));
  CHECK(has(error_of([&] { ops::gather_rows_into(Tensor::zeros({10, 4}), {0, 1, 2, 10}, g); }),
            "index 10"));
}

namespace {

struct Mnist {
  Tensor x, t, x_test, t_test;
};

Mnist load(int64_t n_train, int64_t n_test, DType dt) {
  const auto d = data::load_mnist(kMnist, data::Split::train, n_train + n_test);
  Mnist m;
  const Tensor t = ops::one_hot(d.labels, 10, dt, Device::cpu());
  m.x = d.images.rows(0, n_train).to(dt);
  m.t = t.rows(0, n_train).clone();
  m.x_test = d.images.rows(n_train, n_train + n_test).to(dt);
  m.t_test = t.rows(n_train, n_train + n_test).clone();
  return m;
}

// Model k of train_models (run with the suite's thread count, 2 under CTest) against nn::train
// of a fresh make_model(spec, seed k) on its subset with one BLAS thread: every parameter and
// every epoch loss bit for bit; then test_losses against nn::predict, also on one thread.
// (nn::train with threaded OpenBLAS rounds its GEMMs differently, so it is not the reference.)
void check_against_separate_runs(const std::string& spec, const Mnist& d,
                                 const std::vector<std::vector<int64_t>>& subsets,
                                 const std::vector<uint64_t>& seeds, const nn::TrainConfig& cfg,
                                 int64_t max_models) {
  std::vector<std::vector<double>> batched_loss;
  const auto models = nn::train_models(spec, d.x, d.t, subsets, seeds, cfg, max_models, &batched_loss);
  REQUIRE(models.size() == subsets.size());
  const auto losses = nn::test_losses(models, d.x_test, d.t_test, cfg.loss, max_models);
  for (std::size_t k = 0; k < subsets.size(); ++k) {
    CAPTURE(k);
    nn::Init init;
    init.seed = seeds[k];
    init.dtype = d.x.dtype();
    auto alone = nn::make_model(spec, init);
    nn::TrainConfig c = cfg;
    c.seed = seeds[k];
    nn::TrainResult r;
    with_threads(1, [&] {
      r = nn::train(*alone, ops::gather_rows(d.x, subsets[k]), ops::gather_rows(d.t, subsets[k]), c);
    });
    CHECK(r.epoch_loss == batched_loss[k]);
    const auto pa = alone->named_parameters(), pb = models[k]->named_parameters();
    REQUIRE(pa.size() == pb.size());
    for (std::size_t i = 0; i < pa.size(); ++i) {
      CAPTURE(pa[i].name);
      CHECK(same_bits(pa[i].var->value(), pb[i].var->value()));
    }
    // And the training changed the weights (the comparison is not of two untouched inits).
    auto init_model = nn::make_model(spec, init);
    CHECK_FALSE(same_bits(init_model->named_parameters()[0].var->value(), pb[0].var->value()));

    Tensor z;
    with_threads(1, [&] { z = nn::predict(*alone, d.x_test); });
    Tensor l = Tensor::empty({z.dim(0)}, z.dtype());
    if (cfg.loss == nn::LossKind::cross_entropy)
      ops::softmax_xent(z, d.t_test, l, nullptr);
    else
      ops::mse(z, d.t_test, l, nullptr);
    CHECK(l.to_vector() == losses[k]);
  }
}

std::vector<int64_t> random_subset(int64_t n, int64_t size, uint64_t seed) {
  std::vector<int64_t> p = rng::permutation(n, seed, 77);
  p.resize(static_cast<std::size_t>(size));
  return p;
}

}  // namespace

TEST_CASE("train_models: B MNIST MLPs at once equal B separate nn::train runs, bit for bit") {
  // The paper's MLP and recipe (dropout 0.1, SGD 0.01 / 0.9, batch 64) for 2 epochs on subsets
  // of 250 of 600 real MNIST images: 250 = 3 * 64 + 58, so the ragged last batch is exercised.
  // max_models = 3 puts 5 models into batches of 3 and 2.
  const Mnist d = load(600, 100, DType::f32);
  std::vector<std::vector<int64_t>> subsets;
  std::vector<uint64_t> seeds;
  for (int k = 0; k < 5; ++k) {
    subsets.push_back(random_subset(600, 250, 100 + k));
    seeds.push_back(12345 + 1000003ull * k);
  }
  nn::TrainConfig cfg;
  cfg.epochs = 2;
  cfg.progress = false;
  check_against_separate_runs("mlp", d, subsets, seeds, cfg, 3);
}

TEST_CASE("train_models: subsets of different sizes, float64, Adam with weight decay, no dropout") {
  const Mnist d = load(300, 40, DType::f64);
  const std::vector<std::vector<int64_t>> subsets = {random_subset(300, 100, 1), random_subset(300, 70, 2),
                                                     random_subset(300, 100, 3), random_subset(300, 33, 4)};
  const std::vector<uint64_t> seeds = {5, 6, 7, 8};
  nn::TrainConfig cfg;
  cfg.epochs = 2;
  cfg.batch = 32;
  cfg.optimizer = "adam";
  cfg.lr = 1e-3;
  cfg.weight_decay = 1e-3;
  cfg.progress = false;
  check_against_separate_runs("mlp:784-24-12-10,dropout=0", d, subsets, seeds, cfg, 8);
}

TEST_CASE("train_models: dropout 0.3, SGD with weight decay, MSE loss, no bias") {
  const Mnist d = load(200, 30, DType::f32);
  const std::vector<std::vector<int64_t>> subsets = {random_subset(200, 90, 9), random_subset(200, 90, 10)};
  nn::TrainConfig cfg;
  cfg.epochs = 2;
  cfg.batch = 16;
  cfg.weight_decay = 5e-4;
  cfg.loss = nn::LossKind::mse;
  cfg.progress = false;
  check_against_separate_runs("mlp:784-20-10,dropout=0.3,bias=0", d, subsets, {21, 22}, cfg, 2);
}

TEST_CASE("MlpBatch and train_models reject what they cannot do") {
  const Mnist d = load(50, 1, DType::f32);
  nn::TrainConfig cfg;
  cfg.epochs = 1;
  cfg.progress = false;
  CHECK(has(error_of([&] { nn::train_models("mlp", d.x, d.t, {{0, 1}}, {1, 2}, cfg); }), "2 seeds"));
  CHECK(has(error_of([&] { nn::train_models("mlp", d.x, d.t, {{0, 60}}, {1}, cfg); }), "index 60"));
  CHECK(has(error_of([&] { nn::train_models("mlp:784-10", d.x, d.t.rows(0, 40), {{0}}, {1}, cfg); }),
            "do not fit"));
  auto mlp = [](const std::vector<int64_t>& sizes) { return std::make_unique<nn::Mlp>(sizes, 0.1, true, nn::Init{}); };
  auto m1 = mlp({784, 128, 64, 10}), m2 = mlp({784, 128, 64, 10});
  nn::MlpBatch batch({m1.get(), m2.get()});
  CHECK(has(error_of([&] { batch.train(d.x, d.t, {{0, 1}, {2}}, {1, 2}, cfg); }), "equal sizes"));
  nn::TrainConfig resume = cfg;
  resume.resume_path = "/tmp/x";
  CHECK(has(error_of([&] { batch.train(d.x, d.t, {{0}, {2}}, {1, 2}, resume); }), "resume_path"));
  auto other = mlp({784, 32, 10});
  CHECK(has(error_of([&] { nn::MlpBatch({m1.get(), other.get()}); }), "every model must be"));
  CHECK(has(error_of([&] { batch.predict(Tensor::zeros({3, 100})); }), "(3, 100)"));
}
