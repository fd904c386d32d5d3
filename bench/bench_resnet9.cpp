// ResNet-9 benchmarks, one JSON line each: this machine's sgemm GFLOP/s (the peak), conv2d
// forward and backward (input and weight gradients) for every conv shape of ResNet-9 on 32x32
// CIFAR-10 images, and ResNet-9 training throughput (images/s, GFLOP/s) with the paper's recipe
// (Adam, batch 64) on the shipped CIFAR-10 records, and the projected per-sample gradients of
// attribution (the featurizer at P = 256: images/s and GFLOP/s). Flops: 2 MACs per multiply-add of the
// convolutions and the classifier; a training step counts forward + input gradient + weight
// gradient (the first conv has no input gradient). The GPU kernels are measured by
// bench_kernels_gpu where a GPU is present; this line says when none is.
//   usage: bench_resnet9 [--data-dir data/cifar10] [--batch 64] [--images 512] [--quick]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "attribution/featurizer.h"
#include "attribution/projector.h"
#include "bench/bench_util.h"
#include "engine/autodiff.h"
#include "engine/ops.h"
#include "kernels/philox.cuh"
#include "nn/datasets.h"
#include "nn/models.h"
#include "nn/resnet.h"
#include "nn/trainer.h"

using namespace iif;

namespace {

Tensor rand_f32(const Shape& s, uint64_t stream) {
  std::vector<double> v(static_cast<std::size_t>(s.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 2.0 * philox::uniform(3, stream, i) - 1.0;
  return Tensor::from_vector(v, s, DType::f32);
}

struct ConvShape {
  int64_t cin, cout, hw;  // 3x3, padding 1, stride 1, hw x hw images
};

// Multiply-adds of one image through every conv and the classifier of resnet9:<channels>.
double forward_macs(const std::vector<int64_t>& c, int64_t classes, std::vector<ConvShape>* shapes) {
  const std::vector<ConvShape> s = {{3, c[0], 32},    {c[0], c[1], 32}, {c[1], c[2], 16}, {c[2], c[3], 16},
                                    {c[3], c[4], 16}, {c[4], c[5], 8},  {c[5], c[6], 4},  {c[6], c[7], 4}};
  double macs = double(c[7]) * double(classes);
  for (const ConvShape& k : s) macs += double(k.cin) * double(k.cout) * 9.0 * double(k.hw * k.hw);
  if (shapes) *shapes = s;
  return macs;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "data/cifar10";
  int64_t batch = 64, images = 512;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--data-dir" && i + 1 < argc) dir = argv[++i];
    else if (a == "--batch" && i + 1 < argc) batch = std::stoll(argv[++i]);
    else if (a == "--images" && i + 1 < argc) images = std::stoll(argv[++i]);
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: bench_resnet9 [--data-dir DIR] [--batch B] [--images N] [--quick]\n");
      return 2;
    }
  }
  if (quick) images = std::min<int64_t>(images, 2 * batch);
  iif_bench::JsonLines out;
  out.note_peak(iif_bench::sgemm_gflops(1024, 10));
  out.note_peak(iif_bench::sgemm_gflops(2048, 3));

  const std::vector<int64_t> ch{64, 128, 128, 128, 256, 512, 512, 512};
  std::vector<ConvShape> shapes;
  const double macs = forward_macs(ch, 10, &shapes);

  // Each distinct conv shape: forward, then backward (input and weight gradients) of a batch.
  const int reps = quick ? 1 : 3;
  std::vector<std::string> seen;
  for (const ConvShape& k : shapes) {
    const std::string size = std::to_string(batch) + "x" + std::to_string(k.cin) + "x" + std::to_string(k.hw) + "x" +
                             std::to_string(k.hw) + " -> " + std::to_string(k.cout) + ", 3x3 pad 1";
    if (std::find(seen.begin(), seen.end(), size) != seen.end()) continue;
    seen.push_back(size);
    Window2d w;
    w.kh = w.kw = 3;
    w.ph = w.pw = 1;
    const Var x(rand_f32({batch, k.cin, k.hw, k.hw}, 1), true);
    const Var wt(rand_f32({k.cout, k.cin, 3, 3}, 2), true);
    const double flops = 2.0 * double(batch) * double(k.cin * k.cout * 9 * k.hw * k.hw);
    Var y;
    const double fwd = iif_bench::best_seconds(reps, [&] { y = ad::conv2d(x, wt, Var(), w); });
    const Tensor seed = rand_f32(y.shape(), 3);
    const double bwd = iif_bench::best_seconds(reps, [&] {
      Var yy = ad::conv2d(x, wt, Var(), w);
      backward(yy, seed);
    }) - fwd;
    out.add("conv2d_forward", size, fwd, flops / fwd / 1e9);
    out.add("conv2d_backward", size, bwd, 2.0 * flops / bwd / 1e9);
  }

  // Training: the paper's ResNet-9 with Adam, on the shipped records (the first `images`).
  data::Dataset d = data::load_cifar10(dir, data::Split::train, images);
  auto model = nn::make_model("resnet9", {});
  nn::TrainConfig c;
  c.epochs = 1;
  c.batch = batch;
  c.optimizer = "adam";
  c.lr = 1e-3;
  c.progress = false;
  nn::train(*model, d.images.rows(0, std::min<int64_t>(batch, d.size())),
            ops::one_hot(std::vector<int64_t>(d.labels.begin(), d.labels.begin() + std::min<int64_t>(batch, d.size())), 10,
                         DType::f32, Device::cpu()),
            c);  // warm-up step: the allocator's pool fills once
  const nn::TrainResult r = nn::train(*model, d, c);
  const double train_flops = 2.0 * (3.0 * macs - 3.0 * double(ch[0]) * 9.0 * 1024.0) * double(d.size());
  out.add("resnet9_train_adam", std::to_string(d.size()) + " CIFAR-10 images, batch " + std::to_string(batch),
          r.seconds, train_flops / r.seconds / 1e9,
          ", \"images_per_second\": " + std::to_string(r.samples_per_second) +
              ", \"flops_per_image\": " + std::to_string(train_flops / double(d.size())));
  const auto t0 = std::chrono::steady_clock::now();
  nn::predict(*model, d.images, batch);
  const double sp = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.add("resnet9_predict", std::to_string(d.size()) + " CIFAR-10 images, batch " + std::to_string(batch), sp,
          2.0 * macs * double(d.size()) / sp / 1e9, ", \"images_per_second\": " + std::to_string(double(d.size()) / sp));
  // Attribution: projected per-sample gradients (P = 256, Rademacher) of the trained model in
  // evaluation mode, one cotangent set (the cross-entropy's). Flops per image: forward and the
  // backward's input gradients (2 x 2 MACs, the first conv without the latter), every layer's
  // per-sample weight-gradient formation (2 MACs of the convs: sum over positions of d a^T), and
  // the projection 2 M P.
  {
    const int64_t n = std::min<int64_t>(d.size(), quick ? 32 : 256), fbatch = std::min<int64_t>(n, 128);
    model->set_training(false);
    attr::ProjectorSpec spec;
    spec.dim = 256;
    const attr::Projector proj(model->num_parameters(), spec);
    attr::Featurizer f(*model, proj);
    const Tensor x = d.images.rows(0, n);
    const Tensor t = ops::one_hot(std::vector<int64_t>(d.labels.begin(), d.labels.begin() + n), 10, DType::f32,
                                  Device::cpu());
    const attr::CotangentFn cot = [&](const Tensor& logits, int64_t first) {
      return attr::xent_cotangent(logits, t.rows(first, first + logits.dim(0)));
    };
    f.project(x, {cot}, fbatch, false);  // warm-up
    const double sec = iif_bench::best_seconds(quick ? 1 : 2, [&] { f.project(x, {cot}, fbatch, false); });
    const double m = double(model->num_parameters());
    const double flops = (2.0 * (3.0 * macs - 3.0 * double(ch[0]) * 9.0 * 1024.0) + 2.0 * m * 256.0) * double(n);
    const attr::Featurizer::Timing tm = f.last_timing();
    out.add("resnet9_featurize_p256", std::to_string(n) + " CIFAR-10 images, batch " + std::to_string(fbatch) +
                                          ", M = " + std::to_string(model->num_parameters()),
            sec, flops / sec / 1e9,
            ", \"images_per_second\": " + std::to_string(double(n) / sec) +
                ", \"autodiff_seconds\": " + std::to_string(tm.autodiff) +
                ", \"project_seconds\": " + std::to_string(tm.project));
  }
  out.flush();
  std::printf("{\"what\": \"resnet9_gpu_kernels\", \"note\": \"no GPU found: this build measures the CPU backend; "
              "the CUDA kernels (kernels/image.cuh, kernels/projection.cuh) run here on the SIMT emulator in the "
              "tests only; bench_kernels_gpu times them on a GPU\"}\n");
  return 0;
}
