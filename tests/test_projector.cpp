// attribution/projector: R's documented definition (Rademacher from Philox bits, Gaussian from
// rng::normal), rows() and fill_rows() against entry(), tiled projection against a plain-loop
// oracle, the Johnson-Lindenstrauss guarantee with its bound derived below, identity, P = 1,
// empty sizes and the errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "attribution/projector.h"
#include "engine/rng.h"
#include "kernels/philox.cuh"
#include "projection_oracle.h"
#include "test_util.h"

using namespace iif;
using attr::ProjectionKind;
using attr::Projector;
using attr::ProjectorSpec;

using iif_test::error_of;

namespace {

ProjectorSpec spec(ProjectionKind kind, int64_t dim, uint64_t seed = 7) {
  ProjectorSpec s;
  s.kind = kind;
  s.dim = dim;
  s.seed = seed;
  return s;
}

// Standard normal test data, from a stream no projector reads (seed 12345).
Tensor randn(int64_t rows, int64_t cols, uint64_t stream, DType dt = DType::f64) {
  std::vector<double> v(static_cast<std::size_t>(rows * cols));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = rng::normal(12345, stream, i);
  return Tensor::from_vector(v, {rows, cols}, dt);
}


// |got - want| <= k u sum|g||R| per entry: the worst-case error of a summation of depth k in a
// dtype with unit roundoff u (Higham, Accuracy and Stability, eq. 3.5). Prints the first misses.
void check_within(const Tensor& got, const std::vector<double>& want, const std::vector<double>& mag,
                  double k_u) {
  const std::vector<double> g = got.to_vector();
  REQUIRE(g.size() == want.size());
  int bad = 0;
  double worst = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const double err = std::fabs(g[i] - want[i]), tol = k_u * mag[i] + 1e-300;
    worst = std::max(worst, err / tol);
    if (!(err <= tol) && bad++ < 5)
      MESSAGE("entry " << i << ": got " << g[i] << ", want " << want[i] << ", tolerance " << tol);
  }
  INFO("worst error / tolerance = " << worst);
  CHECK(bad == 0);
}

constexpr double kU64 = std::numeric_limits<double>::epsilon() / 2;
constexpr double kU32 = std::numeric_limits<float>::epsilon() / 2;

}  // namespace

TEST_CASE("Rademacher entries are +-1/sqrt(P) from bit c % 32 of philox::bits(seed, r, c / 32)") {
  for (int64_t p : {1, 7, 128, 300}) {
    const Projector pr(1000, spec(ProjectionKind::rademacher, p, 99));
    const double s = 1.0 / std::sqrt(double(p));
    CHECK(pr.output_dim() == p);
    CHECK(pr.input_dim() == 1000);
    int64_t plus = 0, n = 0;
    for (int64_t r = 0; r < 1000; ++r)
      for (int64_t c = 0; c < p; ++c) {
        const uint32_t w = philox::bits(99, uint64_t(r), uint64_t(c / 32));
        const double want = ((w >> (c % 32)) & 1u) ? -s : s;
        if (pr.entry(r, c) != want) {
          FAIL_CHECK("entry(" << r << ", " << c << ") = " << pr.entry(r, c) << ", want " << want);
          r = 1000;
          break;
        }
        plus += want > 0;
        ++n;
      }
    // Balanced signs: plus ~ Binomial(n, 1/2); 6 standard deviations (two-sided p ~ 2e-9).
    INFO("P = " << p << ": " << plus << " of " << n << " entries are positive");
    CHECK(std::fabs(double(plus) - n / 2.0) <= 6.0 * std::sqrt(n / 4.0));
  }
}

TEST_CASE("rows() and fill_rows() equal entry(); the same (seed, r, c) always gives the same value") {
  for (ProjectionKind kind : {ProjectionKind::rademacher, ProjectionKind::gaussian}) {
    const std::string kind_name = attr::projection_kind_name(kind);
    CAPTURE(kind_name);
    for (int64_t p : {1, 37, 129, 256}) {
      CAPTURE(p);
      const Projector pr(500, spec(kind, p, 3));
      const Projector again(500, spec(kind, p, 3));
      const Tensor r64 = pr.rows(123, 77, DType::f64), r32 = pr.rows(123, 77, DType::f32);
      CHECK(r64.shape() == Shape{77, p});
      const std::vector<double> v64 = r64.to_vector(), v32 = r32.to_vector();
      int64_t mism = 0;
      for (int64_t j = 0; j < 77; ++j)
        for (int64_t c = 0; c < p; ++c) {
          const double e = pr.entry(123 + j, c);
          mism += v64[j * p + c] != e;
          mism += v32[j * p + c] != double(static_cast<float>(e));
        }
      CHECK(mism == 0);
      const Tensor twice = again.rows(123, 77, DType::f64);
      CHECK(std::memcmp(twice.raw(), r64.raw(), r64.nbytes()) == 0);
      // fill_rows with a row stride: guard values past column P must survive.
      const int64_t ld = p + 5;
      const float kGuard = 12345.0f;
      std::vector<float> buf(static_cast<std::size_t>(77 * ld), kGuard);
      pr.fill_rows(123, 77, buf.data(), ld);
      int64_t bad = 0;
      for (int64_t j = 0; j < 77; ++j) {
        for (int64_t c = 0; c < p; ++c) bad += buf[j * ld + c] != static_cast<float>(v32[j * p + c]);
        for (int64_t c = p; c < ld; ++c) bad += buf[j * ld + c] != kGuard;
      }
      CHECK(bad == 0);
    }
  }
  // A different seed, and neighbouring rows, agree in about half the signs (independent streams).
  const int64_t p = 4096;
  const Projector a(10, spec(ProjectionKind::rademacher, p, 1)), b(10, spec(ProjectionKind::rademacher, p, 2));
  const std::vector<double> ra = a.rows(0, 2, DType::f64).to_vector(), rb = b.rows(0, 1, DType::f64).to_vector();
  int64_t same_seed = 0, same_row = 0;
  for (int64_t c = 0; c < p; ++c) {
    same_seed += ra[c] == rb[c];
    same_row += ra[c] == ra[p + c];
  }
  const double sd = std::sqrt(p / 4.0);
  CHECK(std::fabs(same_seed - p / 2.0) <= 6 * sd);
  CHECK(std::fabs(same_row - p / 2.0) <= 6 * sd);
}

TEST_CASE("Gaussian entries are rng::normal(seed, r | 2^63, c) * (1/sqrt(P)), mean 0 and variance 1/P") {
  const int64_t m = 400, p = 256;
  const Projector pr(m, spec(ProjectionKind::gaussian, p, 5));
  const double s = 1.0 / std::sqrt(double(p));
  const std::vector<double> v = pr.rows(0, m, DType::f64).to_vector();
  int64_t mism = 0;
  double sum = 0, sum2 = 0;
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < p; ++c) {
      const double want = rng::normal(5, uint64_t(r) | (uint64_t{1} << 63), uint64_t(c)) * s;
      mism += pr.entry(r, c) != want;
      mism += v[r * p + c] != want;
      sum += v[r * p + c];
      sum2 += v[r * p + c] * v[r * p + c];
    }
  CHECK(mism == 0);
  // z = entry * sqrt(P) is N(0, 1): over n = 102,400 entries the sample mean has sd 1/sqrt(n)
  // and the sample variance sd sqrt(2/n); allow 5 sd each.
  const double n = double(m * p);
  const double mean_z = sum / n * std::sqrt(double(p));
  const double var_z = (sum2 / n) * double(p) - mean_z * mean_z;
  INFO("mean " << mean_z << ", variance " << var_z);
  CHECK(std::fabs(mean_z) <= 5.0 / std::sqrt(n));
  CHECK(std::fabs(var_z - 1.0) <= 5.0 * std::sqrt(2.0 / n));
}

TEST_CASE("project_block in tiles equals project() and the plain-loop oracle") {
  const int64_t m = 1000, b = 5;
  for (ProjectionKind kind : {ProjectionKind::rademacher, ProjectionKind::gaussian}) {
    for (int64_t p : {1, 37, 300}) {
      const std::string kind_name = attr::projection_kind_name(kind);
      CAPTURE(kind_name);
      CAPTURE(p);
      Projector pr(m, spec(kind, p, 11));
      const Tensor g = randn(b, m, 1);
      std::vector<double> want, mag;
      iif_test::project_oracle(pr, g, want, mag);
      // Depth of any summation here is at most m + 1 (m products and an existing y).
      const Tensor whole = pr.project(g);
      CHECK(whole.shape() == Shape{b, p});
      check_within(whole, want, mag, (m + 2) * kU64);

      // Small tiles: 7 rows of R per generated tile, g copied tile by tile.
      pr.set_tile_bytes(std::size_t(7 * p * 8));
      check_within(pr.project(g), want, mag, (m + 2) * kU64);

      // Caller-side blocks of rows (uneven, one of size 1), accumulated with beta = 1.
      const std::vector<double> gv = g.to_vector();
      Tensor y = Tensor::full({b, p}, std::nan(""), DType::f64);
      int64_t r0 = 0;
      for (int64_t len : {300, 1, 699}) {
        std::vector<double> blk;
        for (int64_t s = 0; s < b; ++s)
          for (int64_t j = 0; j < len; ++j) blk.push_back(gv[s * m + r0 + j]);
        pr.project_block(Tensor::from_vector(blk, {b, len}, DType::f64), r0, r0 == 0 ? 0.0 : 1.0, y);
        r0 += len;
      }
      check_within(y, want, mag, (m + 2) * kU64);  // beta = 0 overwrote the NaNs

      // beta scales what y held: y = g R + 0.5 * 3.
      Tensor y3 = Tensor::full({b, p}, 3.0, DType::f64);
      pr.project_block(g, 0, 0.5, y3);
      std::vector<double> shifted = want;
      for (double& v : shifted) v += 1.5;
      std::vector<double> mag3 = mag;
      for (double& v : mag3) v += 1.5;
      check_within(y3, shifted, mag3, (m + 3) * kU64);

      // float32: the same oracle, unit roundoff 2^-24, plus the rounding of g and R to float.
      const Tensor g32 = g.to(DType::f32);
      pr.set_tile_bytes(std::size_t(8) << 20);
      check_within(pr.project(g32), want, mag, (m + 4) * kU32);
    }
  }
}

// Johnson-Lindenstrauss. For a fixed unit vector x and R with independent entries of variance
// 1/P, Gaussian (Dasgupta and Gupta 2003, Lemma 2.2) or Rademacher (Achlioptas 2003: its moment
// generating function is dominated by the Gaussian's, so the same Chernoff bounds hold):
//   Pr(| |Rx|^2 - 1 | >= eps) <= 2 exp(-P (eps^2/2 - eps^3/3) / 2).
// Inner products follow by polarisation: <Ru,Rv> - <u,v> = (|R(u+v)|^2 - |u+v|^2
// - |R(u-v)|^2 + |u-v|^2) / 4, so if both squared norms are within eps relative, the error is at
// most eps (|u+v|^2 + |u-v|^2) / 4 = eps for unit u, v. With 20 vectors: 20 norms and 190 pairs,
// i.e. n = 20 + 2 * 190 = 400 events; a union bound fails with probability <= delta when
//   n * 2 exp(-P (eps^2/4 - eps^3/6)) <= delta,
// solved below for eps. The simpler, looser eps = sqrt(8 ln(2n/delta) / P) also satisfies it,
// since eps^2/4 - eps^3/6 >= eps^2/8 for eps <= 3/4. The seed is fixed, so the test is
// deterministic; delta = 1e-4 is the chance that a seed would fail.
TEST_CASE("Johnson-Lindenstrauss: 20 unit vectors in M = 5000 keep norms and inner products") {
  const int64_t m = 5000, p = 512, k = 20;
  const double n_events = k + 2.0 * (k * (k - 1) / 2), delta = 1e-4;
  const double target = std::log(2.0 * n_events / delta) / double(p);
  double lo = 0, hi = 0.75;  // eps^2/4 - eps^3/6 increases on [0, 1]
  for (int it = 0; it < 100; ++it) {
    const double mid = (lo + hi) / 2;
    (mid * mid / 4 - mid * mid * mid / 6 >= target ? hi : lo) = mid;
  }
  const double eps = hi, eps_simple = std::sqrt(8.0 * std::log(2.0 * n_events / delta) / p);
  REQUIRE(eps <= eps_simple);
  REQUIRE(eps_simple <= 0.75);
  MESSAGE("JL bound eps = " << eps << " (simple form " << eps_simple << ")");

  Tensor u = randn(k, m, 2);
  {
    std::vector<double> v = u.to_vector();
    for (int64_t i = 0; i < k; ++i) {
      double n2 = 0;
      for (int64_t j = 0; j < m; ++j) n2 += v[i * m + j] * v[i * m + j];
      for (int64_t j = 0; j < m; ++j) v[i * m + j] /= std::sqrt(n2);
    }
    u = Tensor::from_vector(v, {k, m}, DType::f64);
  }
  const std::vector<double> uv = u.to_vector();
  for (ProjectionKind kind : {ProjectionKind::rademacher, ProjectionKind::gaussian}) {
    const std::string kind_name = attr::projection_kind_name(kind);
    CAPTURE(kind_name);
    const Projector pr(m, spec(kind, p, 2024));
    const std::vector<double> y = pr.project(u).to_vector();
    double worst_norm = 0, worst_dot = 0;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = i; j < k; ++j) {
        double a = 0, b = 0;
        for (int64_t c = 0; c < m; ++c) a += uv[i * m + c] * uv[j * m + c];
        for (int64_t c = 0; c < p; ++c) b += y[i * p + c] * y[j * p + c];
        (i == j ? worst_norm : worst_dot) = std::max(i == j ? worst_norm : worst_dot, std::fabs(a - b));
      }
    MESSAGE(std::string(attr::projection_kind_name(kind)) << ": worst squared-norm error " << worst_norm
                                             << ", worst inner-product error " << worst_dot);
    CHECK(worst_norm <= eps);
    CHECK(worst_dot <= eps);
  }
}

TEST_CASE("identity projector: P = M, R = I, project() returns its input") {
  const Projector pr(50, spec(ProjectionKind::identity, 3));  // dim is ignored
  CHECK(pr.output_dim() == 50);
  CHECK(pr.entry(4, 4) == 1.0);
  CHECK(pr.entry(4, 5) == 0.0);
  const std::vector<double> r = pr.rows(10, 3, DType::f64).to_vector();
  for (int64_t j = 0; j < 3; ++j)
    for (int64_t c = 0; c < 50; ++c) CHECK(r[j * 50 + c] == (c == 10 + j ? 1.0 : 0.0));
  const Tensor g = randn(4, 50, 3);
  const Tensor y = pr.project(g);
  CHECK(std::memcmp(y.raw(), g.raw(), g.nbytes()) == 0);
  // A block of rows lands in its own columns; beta scales the rest.
  Tensor yb = Tensor::full({4, 50}, 2.0, DType::f64);
  const Tensor blk = randn(4, 5, 4);
  pr.project_block(blk, 20, 0.5, yb);
  const std::vector<double> ybv = yb.to_vector(), bv = blk.to_vector();
  int64_t bad = 0;
  for (int64_t s = 0; s < 4; ++s)
    for (int64_t c = 0; c < 50; ++c) {
      const double want = 1.0 + ((c >= 20 && c < 25) ? bv[s * 5 + c - 20] : 0.0);
      bad += ybv[s * 50 + c] != want;
    }
  CHECK(bad == 0);
}

TEST_CASE("P = 1, empty batches and empty blocks") {
  const Projector pr(10, spec(ProjectionKind::rademacher, 1));
  for (int64_t r = 0; r < 10; ++r) CHECK(std::fabs(pr.entry(r, 0)) == 1.0);
  const Tensor g = randn(3, 10, 5);
  std::vector<double> want, mag;
  iif_test::project_oracle(pr, g, want, mag);
  check_within(pr.project(g), want, mag, 12 * kU64);

  CHECK(pr.project(Tensor::zeros({0, 10}, DType::f64)).shape() == Shape{0, 1});
  CHECK(pr.rows(10, 0).shape() == Shape{0, 1});
  Tensor y = Tensor::full({3, 1}, 4.0, DType::f64);
  pr.project_block(Tensor::zeros({3, 0}, DType::f64), 10, 0.25, y);  // m = 0: y = beta y
  CHECK(y.to_vector() == std::vector<double>{1.0, 1.0, 1.0});
}

TEST_CASE("projector errors name the shapes") {
  CHECK_THROWS_AS(Projector(10, spec(ProjectionKind::rademacher, 0)), std::invalid_argument);
  CHECK_THROWS_AS(Projector(10, spec(ProjectionKind::gaussian, -3)), std::invalid_argument);
  CHECK_THROWS_AS(Projector(0, spec(ProjectionKind::rademacher, 4)), std::invalid_argument);
  const Projector pr(10, spec(ProjectionKind::rademacher, 4));
  const std::string e1 = error_of([&] { pr.project(Tensor::zeros({2, 9}, DType::f64)); });
  CHECK(e1.find("(2, 9)") != std::string::npos);
  Tensor y = Tensor::zeros({2, 5}, DType::f64);
  const std::string e2 = error_of([&] { pr.project_block(Tensor::zeros({2, 3}, DType::f64), 0, 0.0, y); });
  CHECK(e2.find("(2, 3)") != std::string::npos);
  CHECK(e2.find("(2, 5)") != std::string::npos);
  Tensor y4 = Tensor::zeros({2, 4}, DType::f64);
  CHECK_THROWS_AS(pr.project_block(Tensor::zeros({2, 3}, DType::f64), 8, 0.0, y4), std::invalid_argument);
  CHECK_THROWS_AS(pr.project_block(Tensor::zeros({2, 3}, DType::f32), 0, 0.0, y4), std::invalid_argument);
  CHECK_THROWS_AS(pr.rows(8, 3), std::invalid_argument);
  CHECK_THROWS_AS(pr.rows(-1, 1), std::invalid_argument);
  CHECK_THROWS_AS(pr.entry(10, 0), std::out_of_range);
  CHECK_THROWS_AS(pr.entry(0, 4), std::out_of_range);
  std::vector<float> buf(12);
  CHECK_THROWS_AS(pr.fill_rows(0, 3, buf.data(), 3), std::invalid_argument);
}
