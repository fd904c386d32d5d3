// Tests of the host SIMT emulator (kernels/simt/): barriers (also inside __device__ helpers),
// static and dynamic shared memory, warp shuffles and votes, atomics across blocks and worker
// threads, 2-D/3-D indexing, schedule orders as a race detector, and errors with file:line
// instead of hangs. The kernels are kernels/simt/examples.cuh, which nvcc also compiles.
// CTest label: cuda-emulated (kernels/simt/simt.cmake: iif_simt_test(test_simt)).
#include <doctest/doctest.h>

#if defined(IIF_HAVE_SIMT)

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/simt/examples.cuh"

namespace ex = simt::examples;

namespace {

// A buffer of n values followed by guard values that a kernel must leave untouched.
template <class T>
class Guarded {
 public:
  static constexpr int kGuard = 16;
  explicit Guarded(std::size_t n, T fill = T{}) : n_(n), v_(n + kGuard, fill) {
    std::memset(static_cast<void*>(v_.data() + n), 0xA5, kGuard * sizeof(T));
  }
  T* data() { return v_.data(); }
  T& operator[](std::size_t i) { return v_[i]; }
  std::size_t size() const { return n_; }
  std::vector<T> values() const { return std::vector<T>(v_.begin(), v_.begin() + n_); }
  bool guards_intact() const {
    const auto* p = reinterpret_cast<const unsigned char*>(v_.data() + n_);
    for (std::size_t i = 0; i < kGuard * sizeof(T); ++i) {
      if (p[i] != 0xA5) return false;
    }
    return true;
  }

 private:
  std::size_t n_;
  std::vector<T> v_;
};

simt::Options with_schedule(simt::Schedule s, std::uint64_t seed = 0, int workers = 0) {
  simt::Options o = simt::options();
  o.schedule = s;
  o.seed = seed;
  o.workers = workers;
  return o;
}

// Forward, reversed and two random orders: one order alone can hide a race.
const std::vector<simt::Options>& all_orders() {
  static const std::vector<simt::Options> orders = {
      with_schedule(simt::Schedule::forward), with_schedule(simt::Schedule::reversed),
      with_schedule(simt::Schedule::random, 1), with_schedule(simt::Schedule::random, 2)};
  return orders;
}

template <class T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

std::vector<float> uniform_floats(std::size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// The message of the std::runtime_error that fn throws ("" if it throws none).
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

// Under ThreadSanitizer the emulator reports the deliberate race itself (with its line), so
// the test leaves that kernel out there.
#if defined(__SANITIZE_THREAD__)
constexpr bool kRunRacyKernel = false;
#else
constexpr bool kRunRacyKernel = true;
#endif

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// "examples.cuh:123: simt: ..." -> 123 (0 if the message does not start with that file).
int line_in(const std::string& msg, const std::string& file) {
  std::smatch m;
  if (std::regex_search(msg, m, std::regex(file + ":([0-9]+): simt: "))) return std::stoi(m[1]);
  return 0;
}

}  // namespace

TEST_CASE("simt: block reduction through shared memory, barriers inside a __device__ helper") {
  // Integer-valued inputs make every partial sum exact in float32, so the check is equality.
  for (int n : {0, 1, 255, 256, 257, 1000, 5003}) {
    for (int blocks : {1, 3, 7}) {
      std::vector<float> x(n);
      for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i % 7 - 3);
      Guarded<float> partial(blocks, -1.0f);
      ex::block_sum(x.data(), n, partial.data(), blocks);
      for (int b = 0; b < blocks; ++b) {
        double ref = 0.0;  // the elements block b visits in the grid-stride loop
        for (int i = b * ex::kSumBlock; i < n; i += blocks * ex::kSumBlock) {
          for (int t = i; t < i + ex::kSumBlock && t < n; ++t) ref += x[t];
        }
        CHECK_MESSAGE(partial[b] == static_cast<float>(ref), "n=" << n << " blocks=" << blocks << " b=" << b);
      }
      CHECK(partial.guards_intact());
    }
  }
}

TEST_CASE("simt: fiber orders expose a missing __syncthreads; the correct kernel is bitwise stable") {
  const int n = 1000;  // 4 blocks, the last one partial
  const std::vector<float> x = uniform_floats(n, 7);
  const int blocks = ex::tree_sum_blocks(n);
  std::vector<std::vector<float>> good, racy;
  for (const simt::Options& o : all_orders()) {
    simt::ScopedOptions scope(o);
    Guarded<float> p(blocks), q(blocks);
    ex::tree_sum<true>(x.data(), n, p.data());
    if (kRunRacyKernel) ex::tree_sum<false>(x.data(), n, q.data());
    CHECK(p.guards_intact());
    CHECK(q.guards_intact());
    good.push_back(p.values());
    racy.push_back(q.values());
  }
  for (std::size_t k = 1; k < good.size(); ++k) {
    CHECK_MESSAGE(bitwise_equal(good[0], good[k]), "order " << std::string(simt::schedule_name(all_orders()[k].schedule)));
  }
  // The correct kernel against a float64 oracle: a depth-8 tree of float32 additions of
  // |x| <= 1 is within 8 * 2^-24 * 256 per block (the standard gamma_n bound, n = 8 levels).
  for (int b = 0; b < blocks; ++b) {
    double ref = 0.0;
    for (int i = b * ex::kSumBlock; i < std::min(n, (b + 1) * ex::kSumBlock); ++i) ref += x[i];
    CHECK(std::fabs(good[0][b] - ref) <= 8 * std::ldexp(1.0, -24) * 256);
  }
  bool racy_differs = false;
  for (std::size_t k = 1; k < racy.size(); ++k) racy_differs |= !bitwise_equal(racy[0], racy[k]);
  if (kRunRacyKernel) CHECK_MESSAGE(racy_differs, "the racy reduction gave the same bits in every order");
}

TEST_CASE("simt: warp shuffles (xor butterfly, up/down scans, width-8 broadcast and shifts) match host loops") {
  for (int threads : {32, 64, 96}) {
    const int blocks = 3, n = blocks * threads;
    std::mt19937 g(threads);
    std::vector<int> x(n);
    for (int& v : x) v = static_cast<int>(g() % 201) - 100;
    for (const simt::Options& o : all_orders()) {
      simt::ScopedOptions scope(o);
      Guarded<int> xs(n), up(n), down(n), b8(n), up8(n), down8(n);
      ex::warp_ops(x.data(), blocks, threads, xs.data(), up.data(), down.data(), b8.data(), up8.data(),
                   down8.data());
      for (int i = 0; i < n; ++i) {
        const int w0 = i / 32 * 32, lane = i % 32;
        int sum = 0, pre = 0, suf = 0;
        for (int l = 0; l < 32; ++l) {
          sum += x[w0 + l];
          if (l <= lane) pre += x[w0 + l];
          if (l >= lane) suf += x[w0 + l];
        }
        CHECK(xs[i] == sum);
        CHECK(up[i] == pre);
        CHECK(down[i] == suf);
        CHECK(b8[i] == x[i / 8 * 8 + 2]);
        CHECK(up8[i] == (i % 8 >= 3 ? x[i - 3] : x[i]));    // no wrap below the group
        CHECK(down8[i] == (i % 8 + 3 < 8 ? x[i + 3] : x[i]));  // nor above it
      }
      CHECK(xs.guards_intact());
      CHECK(up.guards_intact());
      CHECK(down.guards_intact());
      CHECK(b8.guards_intact());
      CHECK(up8.guards_intact());
      CHECK(down8.guards_intact());
    }
  }
}

TEST_CASE("simt: ballot, any, all and the __syncthreads_count/and/or votes") {
  const int threads = 128, warps = 4;
  std::vector<float> x(threads);
  for (int i = 0; i < threads; ++i) {
    const int w = i / 32, l = i % 32;
    x[i] = w == 0 ? 1.0f : w == 1 ? -1.0f : w == 2 ? (l % 3 == 0 ? 2.0f : 0.0f) : (l == 31 ? 0.0f : 5.0f);
  }
  Guarded<unsigned> ballot(warps);
  Guarded<int> any(warps), all(warps);
  ex::vote(x.data(), 1, threads, ballot.data(), any.data(), all.data());
  for (int w = 0; w < warps; ++w) {
    unsigned ref = 0;
    for (int l = 0; l < 32; ++l) ref |= (x[w * 32 + l] > 0.0f ? 1u : 0u) << l;
    CHECK(ballot[w] == ref);
    CHECK(any[w] == (ref != 0));
    CHECK(all[w] == (ref == 0xffffffffu));
  }
  CHECK(ballot.guards_intact());
  CHECK(any.guards_intact());
  CHECK(all.guards_intact());

  Guarded<int> votes(3);
  ex::barrier_votes(x.data(), threads, votes.data());
  int count = 0;
  for (float v : x) count += v > 0.0f;
  CHECK(votes[0] == count);
  CHECK(votes[1] == 0);
  CHECK(votes[2] == 1);
  std::vector<float> ones(threads, 1.0f);
  ex::barrier_votes(ones.data(), threads, votes.data());
  CHECK(votes[0] == threads);
  CHECK(votes[1] == 1);
  CHECK(votes.guards_intact());
}

TEST_CASE("simt: atomics from many blocks on several workers give exact totals") {
  const int n = 100000;
  std::vector<float> x(n);
  std::vector<int> key(n);
  double total = 0.0;  // < 2^24 and every partial sum an integer: exact in float32 in any order
  for (int i = 0; i < n; ++i) {
    x[i] = static_cast<float>(i % 5);
    key[i] = (i * 7919) % 100003;
    total += x[i];
  }
  int kmax = 0;
  for (int k : key) kmax = std::max(kmax, k);
  for (int workers : {1, 2, 4}) {
    simt::ScopedOptions scope(with_schedule(simt::Schedule::random, 3, workers));
    float fsum = 0.0f;
    double dsum = 0.0;
    int count = 0, imax = -1, first = -1, claims = 0;
    ex::atomics(x.data(), key.data(), n, 16, 128, &fsum, &dsum, &count, &imax, &first, &claims);
    CHECK(fsum == static_cast<float>(total));
    CHECK(dsum == total);
    CHECK(count == n);
    CHECK(imax == kmax);
    CHECK(claims == 1);
    CHECK((first >= 0 && first < n));
  }
}

TEST_CASE("simt: dynamic shared memory through SIMT_DYNAMIC_SHARED") {
  for (int n : {1, 100, 128, 300}) {
    std::vector<float> x(n);
    for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i) * 0.5f;
    Guarded<float> y(n);
    Guarded<int> src(n);
    ex::reverse_chunks(x.data(), n, 128, y.data(), src.data());
    for (int i = 0; i < n; ++i) {
      const int base = i / 128 * 128, len = std::min(128, n - base);
      const int j = base + len - 1 - (i - base);
      CHECK(src[i] == j);
      CHECK(y[i] == x[j]);
    }
    CHECK(y.guards_intact());
    CHECK(src.guards_intact());
  }
}

TEST_CASE("simt: 2-D grid and blocks (tiled GEMM with threadIdx.y) and 3-D coordinates") {
  const int M = 37, N = 29, K = 45;  // none divides the 16 x 16 tile
  const std::vector<float> A = uniform_floats(M * K, 1), B = uniform_floats(K * N, 2);
  std::vector<std::vector<float>> outs;
  for (const simt::Options& o : all_orders()) {
    simt::ScopedOptions scope(o);
    Guarded<float> C(M * N);
    ex::gemm_tiled(A.data(), B.data(), C.data(), M, N, K);
    CHECK(C.guards_intact());
    outs.push_back(C.values());
  }
  for (std::size_t k = 1; k < outs.size(); ++k) CHECK(bitwise_equal(outs[0], outs[k]));
  // Against the plain loop, same k order. Bound gamma_K * sum |a||b| covers a GPU's FMAs too.
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float ref = 0.0f;
      double mag = 0.0;
      for (int k = 0; k < K; ++k) {
        ref += A[i * K + k] * B[k * N + j];
        mag += std::fabs(A[i * K + k] * B[k * N + j]);
      }
      CHECK(std::fabs(outs[0][i * N + j] - ref) <= 2 * K * std::ldexp(1.0, -24) * mag);
    }
  }

  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const int threads = 4 * 3 * 2, total = threads * 12;
  Guarded<int> c(6 * total, -1);
  ex::coords(grid, block, c.data());
  int g = 0;
  for (int bz = 0; bz < 2; ++bz)
    for (int by = 0; by < 2; ++by)
      for (int bx = 0; bx < 3; ++bx)
        for (int tz = 0; tz < 2; ++tz)
          for (int ty = 0; ty < 3; ++ty)
            for (int tx = 0; tx < 4; ++tx, ++g) {
              const int want[6] = {tx, ty, tz, bx, by, bz};
              for (int k = 0; k < 6; ++k) CHECK(c[6 * g + k] == want[k]);
            }
  CHECK(c.guards_intact());
}

TEST_CASE("simt: blocks run concurrently on 2 worker threads, each with its own shared memory") {
  simt::ScopedOptions scope(with_schedule(simt::Schedule::forward, 0, 2));
  // Two blocks that each wait for the other: this completes only if they run at once.
  std::vector<int> flags(2, 0), done(2, 0);
  ex::handshake(flags.data(), done.data(), 2, 2000000000LL);
  CHECK(done[0] == 1);
  CHECK(done[1] == 1);
  CHECK(simt::last_launch_stats().workers == 2);
  // Many blocks on 2 workers: each block's shared memory is private to it (exact sums).
  const int n = 50000, blocks = 40;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = static_cast<float>(i % 11 - 5);
  Guarded<float> partial(blocks);
  ex::block_sum(x.data(), n, partial.data(), blocks);
  for (int b = 0; b < blocks; ++b) {
    double ref = 0.0;
    for (int i = b * ex::kSumBlock; i < n; i += blocks * ex::kSumBlock) {
      for (int t = i; t < i + ex::kSumBlock && t < n; ++t) ref += x[t];
    }
    CHECK(partial[b] == static_cast<float>(ref));
  }
  CHECK(partial.guards_intact());
  CHECK(simt::last_launch_stats().blocks == static_cast<std::uint64_t>(blocks));
}

TEST_CASE("simt: barrier divergence and bad warp masks throw with file:line, in every order") {
  for (const simt::Options& o : all_orders()) {
    simt::ScopedOptions scope(o);
    INFO("order " << std::string(simt::schedule_name(o.schedule)) << " seed " << o.seed);

    // Threads past n exit while the others wait at __syncthreads.
    std::vector<float> x(128, 1.0f), y(128, 0.0f);
    const std::string exited = error_of([&] { ex::early_exit(x.data(), 100, 128, y.data()); });
    CHECK(has(exited, "barrier divergence"));
    CHECK(has(exited, "exited"));
    CHECK(line_in(exited, "examples.cuh") > 0);
    // The same kernel with every thread in range is fine.
    CHECK(error_of([&] { ex::early_exit(x.data(), 128, 128, y.data()); }) == "");

    // Even and odd threads wait at different __syncthreads: both sites are named.
    const std::string split = error_of([&] { ex::split_barrier(y.data(), 64); });
    CHECK(has(split, "barrier divergence"));
    std::smatch m;
    REQUIRE(std::regex_search(split, m, std::regex("examples.cuh:([0-9]+): .* at \\S*examples.cuh:([0-9]+)")));
    CHECK(m[1] != m[2]);

    // A shuffle whose mask names lanes that exited.
    const std::string shfl = error_of([&] { ex::shfl_exited(y.data()); });
    CHECK(has(shfl, "__shfl_xor_sync"));
    CHECK(has(shfl, "exited"));
    CHECK(line_in(shfl, "examples.cuh") > 0);

    // Half a warp at a shuffle, the other half at a barrier: a deadlock, reported.
    const std::string dead = error_of([&] { ex::warp_vs_barrier(y.data()); });
    CHECK(has(dead, "deadlock"));
    CHECK(has(dead, "__syncthreads"));
    CHECK(has(dead, "__shfl_xor_sync"));
  }
  // A full mask in a partial warp (48 threads) names lanes that do not exist.
  std::vector<int> xi(48, 1), out(48);
  const std::string partial = error_of(
      [&] { ex::warp_ops(xi.data(), 1, 48, out.data(), out.data(), out.data(), out.data(), out.data(), out.data()); });
  CHECK(has(partial, "do not exist"));
  CHECK(line_in(partial, "examples.cuh") > 0);
}

TEST_CASE("simt: launch configuration errors name the launching line") {
  std::vector<float> y(4096);
  const int line = __LINE__ + 1;
  const std::string big = error_of([&] { simt::launch(ex::split_barrier_kernel, 1, 2048, 0, 0, y.data()); });
  CHECK(has(big, "1024"));
  CHECK(line_in(big, "test_simt.cpp") == line);
  CHECK(has(error_of([&] { simt::launch(ex::split_barrier_kernel, 1, dim3(32, 32, 2), 0, 0, y.data()); }), "1024"));
  CHECK(has(error_of([&] { simt::launch(ex::split_barrier_kernel, 0, 32, 0, 0, y.data()); }), "zero extent"));
  const int line2 = __LINE__ + 2;
  const std::string smem =
      error_of([&] { simt::launch(ex::reverse_chunks_kernel, 1, 32, 64 * 1024, 0, y.data(), 32, y.data(),
                                  reinterpret_cast<int*>(y.data())); });
  CHECK(has(smem, "dynamic shared memory"));
  CHECK(line_in(smem, "test_simt.cpp") == line2);
  // Raising the limit (what cudaFuncSetAttribute does on a GPU) admits the launch.
  simt::Options o = simt::options();
  o.max_dynamic_shared_bytes = 96 * 1024;
  simt::ScopedOptions scope(o);
  std::vector<float> x(32, 2.0f), z(32);
  std::vector<int> idx(32);
  CHECK(error_of([&] { simt::launch(ex::reverse_chunks_kernel, 1, 32, 64 * 1024, 0, x.data(), 32, z.data(), idx.data()); }) == "");
  CHECK(idx[0] == 31);
}

#else

TEST_CASE("simt: built without iif_simt (link it: kernels/simt/simt.cmake)" * doctest::skip()) {}

#endif
