// Projected per-sample gradients of a model's parameters, R^T g_i for every sample i, formed
// from the Linear layers' recorded activations a and output cotangents delta without ever
// holding the N x M gradient matrix (DESIGN.md section 4).
//
// Parameter order (the rows of R): named_parameters() order, each tensor flattened row-major;
// for a Linear layer, weight (out, in) then bias (out). So the weight entry (o, i) of a layer
// whose parameters start at row off is row off + o * in + i, and its bias o is row
// off + out * in + o. The per-sample gradient of that layer is
//   g_b = vec(delta_b a_b^T)  (weight),   delta_b  (bias),
// with a_b (in) the layer's input and delta_b (out) the cotangent of its output for sample b.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "attribution/projector.h"
#include "engine/tensor.h"
#include "nn/models.h"

namespace iif {
namespace attr {

// Per-sample output cotangents (B, C) for a batch: given the model outputs (B, C) and the index
// in X of the batch's first sample, returns d l_b / d out_b for each sample b, NOT divided by B
// (each row is its own sample's gradient, not a term of a batch mean).
using CotangentFn = std::function<Tensor(const Tensor& outputs, int64_t first_row)>;

// (sum_c t) softmax(z) - t per row: the gradient of the soft-target cross-entropy
// -sum_c t_c log softmax(z)_c of each sample w.r.t. its logits z (B, C). Linear in t, so a target
// difference Delta gives J Delta (what IIF's v_i need, DESIGN.md section 5).
Tensor xent_cotangent(const Tensor& logits, const Tensor& targets);
// 2 (out - t): the gradient of sum_c (out_c - t_c)^2 per sample.
Tensor mse_cotangent(const Tensor& outputs, const Tensor& targets);

// How a Linear layer's contribution R_l^T g_b is computed (both give the same numbers up to
// rounding; tests hold both to exact() R):
//   factored (default): R_l's rows for output unit o are an (in x P) block R_o, and
//     R_l^T vec(delta_b a_b^T) = sum_o delta_b[o] (a_b^T R_o). The R tile is generated as
//     (in, units x P) and one GEMM A(B,in) x tile gives every a_b^T R_o; each cotangent then
//     only contracts with its delta (2 x out x P flops per sample). The GEMM does not depend on
//     the cotangent, so K cotangents cost about the flops of one (IIF's u and v: K = 2).
//   gradient_tile: forms G(B, rows) = the per-sample gradient entries of a block of rows and
//     multiplies by the generated R tile (GEMM); one GEMM per cotangent. The direct reading of
//     the definition, kept as the cross-check.
// Measured (bench/bench_featurizer.cpp, MNIST MLP, float32, P = 256, 2 threads, sgemm peak
// 145 GFLOP/s): factored 2,295 samples/s with one cotangent (128 GFLOP/s of 2 M P per sample,
// 89% of peak) and 2,271 with two; gradient_tile 1,967 and 976. Hence factored is the default.
enum class FeaturizerKernel { factored, gradient_tile };
const char* featurizer_kernel_name(FeaturizerKernel k);

struct FeaturizerOptions {
  FeaturizerKernel kernel = FeaturizerKernel::factored;
  // Samples projected together with one generation of R. The forward and backward passes run
  // per `batch` (project()'s argument); their (a, delta) are gathered for `chunk` samples, then R
  // is generated tile by tile once and applied to all of them. R costs M x P generated entries
  // per chunk against 2 x M x P flops per sample: for the MNIST MLP (P = 256) generation took
  // ~2% of the time with chunks of 2048 and ~10% with chunks of 256 (bench/bench_featurizer.cpp).
  // Memory: chunk x sum over layers of (in + K out) entries (11 MB for the MNIST MLP, K = 2).
  int64_t chunk = 2048;
  // Bound on each tile the kernels hold: the generated R tile, the GEMM output tile (factored)
  // or the formed gradient tile (gradient_tile). With 8 MiB the GEMMs are large enough for BLAS
  // to run near its peak (layer 0 of the MNIST MLP: (819 x 784) x (784 x 2560)) while the tiles
  // stay far below the N x M matrix they replace. Measured on the MNIST MLP (best of 12 runs):
  // 8 MiB ran ~6% faster than 1 MiB and the same as 32 MiB.
  std::size_t tile_bytes = std::size_t(8) << 20;
  // Bound on one batch's forward and backward passes: project() measures what a few samples
  // record (every parametric layer's inputs and output cotangents: a convolution's im2col
  // patches are the bulk) and lowers its batch so that kPassFactor times that stays within this
  // budget (the factor covers the graph's other tensors, measured ~5x on ResNet-9). ResNet-9
  // records ~8 MB per image: batches of ~40 instead of 256 (9 GB for 200 images before). The
  // MNIST MLP records 4 KB and keeps its batch. 0: no bound.
  std::size_t pass_bytes = std::size_t(2) << 30;
  static constexpr double kPassFactor = 6.0;
};

class Featurizer {
 public:
  // `model` and `proj` must outlive the featurizer. proj.input_dim() must equal the model's
  // parameter count, and every parameter must belong to a parametric layer (nn/module.h):
  // Linear layers take the fused paths below, any other layer the generic one (its own
  // per-sample gradients, projected by the backend's project_rows).
  Featurizer(nn::Model& model, const Projector& proj, FeaturizerOptions options = {});

  // For inputs X (N, ...) in the model's dtype and on its device, returns one (N, P) tensor per
  // cotangent function, in the model's dtype and on its device: row i is R^T g_i with g_i the
  // per-sample gradient of the parameters for the cotangent cots[k]. One forward pass per batch
  // (eval mode: no dropout) and one backward pass per cotangent over that graph. The model's
  // training mode and any accumulated parameter gradients are restored afterwards. With an
  // identity projector the rows are the exact gradients (then N x M must fit, as for exact();
  // on a device they are formed on the host and copied over).
  // On the CPU the options' kernel and chunking apply. On any other device each batch goes
  // straight through the backend's fused linear_project op (engine/backend.h): R is generated
  // on the device, and neither per-sample gradients nor (a, delta) are copied to the host.
  std::vector<Tensor> project(const Tensor& x, const std::vector<CotangentFn>& cots,
                              int64_t batch = 256, bool progress = false);

  // Exact per-sample gradients (N, M) in the model's dtype, whatever the projector. For small
  // models: throws std::invalid_argument if N x M x 8 bytes exceeds 2 GB.
  Tensor exact(const Tensor& x, const CotangentFn& cot, int64_t batch = 256);

  int64_t num_parameters() const { return m_; }

  // Where the time of the last project() call went, in seconds: forward and backward passes
  // (with the cotangent functions), generating R, and the projection arithmetic (GEMMs and
  // contractions).
  struct Timing {
    double autodiff = 0.0, generate = 0.0, project = 0.0;
  };
  const Timing& last_timing() const { return timing_; }
  // The batch the last project() ran its passes with (its argument, or less: pass_bytes).
  int64_t last_batch() const { return last_batch_; }

 private:
  struct Layer {
    nn::ParametricLayer* layer;
    int64_t in, out;
    int64_t weight_row;  // first row of R for the weight (out, in)
    int64_t bias_row;    // first row of R for the bias (out), -1 without one
    // Any other parametric layer (Conv2d, BatchNorm2d, a user's): its per-sample gradients come
    // from the layer (ParametricLayer::per_sample_gradients), rows first_row .. + rows of R.
    bool generic = false;
    int64_t first_row = 0, rows = 0;
  };
  // The generic layers' contribution for the batch whose (a, delta) sweep_batch just recorded:
  // y[k] (B, P) += G R for sub-batches of per-sample gradients G (at most opt_.tile_bytes each);
  // with an identity projector, G is written into y's columns (y on the host).
  void project_generic(const std::vector<Tensor>& a, const std::vector<std::vector<Tensor>>& d,
                       const std::vector<Tensor>& y);
  // Runs the forward pass of X[first, first + B) and one backward pass per cotangent, filling
  // a[l] (B, in) and d[l][k] (B, out).
  // The batch project() runs with: `batch`, lowered to fit opt_.pass_bytes (see there) from
  // one sweep of a few samples.
  int64_t fitted_batch(const Tensor& x, const std::vector<CotangentFn>& cots, int64_t batch);
  void sweep_batch(const Tensor& xb, int64_t first, const std::vector<CotangentFn>& cots,
                   std::vector<Tensor>& a, std::vector<std::vector<Tensor>>& d);
  // Y[k] (n, P) += the projection of the per-sample gradients given by a[l] (n, in) and
  // d[l][k] (n, out).
  void project_chunk(const std::vector<Tensor>& a, const std::vector<std::vector<Tensor>>& d,
                     std::vector<Tensor>& y);
  void check_inputs(const char* what, const Tensor& x, int64_t batch) const;
  // The device path: y[k] (B, P) += every layer's projection through the backend ops
  // (ops::linear_project; R generated by the backend). Used when the model is not on the CPU.
  void project_on_device(const std::vector<Tensor>& a, const std::vector<std::vector<Tensor>>& d,
                         const std::vector<Tensor>& y);

  nn::Model& model_;
  const Projector& proj_;
  FeaturizerOptions opt_;
  std::vector<Layer> layers_;
  int64_t m_ = 0;
  DType dtype_ = DType::f32;
  Device device_;
  Timing timing_;
  int64_t last_batch_ = 0;
};

}  // namespace attr
}  // namespace iif
