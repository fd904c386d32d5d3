// A model with a custom layer and its own CUDA kernels (docs/gpu.md, "Adding a custom layer"):
// Linear(784, 32) -> LayerScale(32) -> ReLU -> Linear(32, 10), LayerScale being
// examples/layerscale.h with the kernels of kernels/layerscale.cuh. Trains it a few epochs on
// MNIST on the CUDA backend and on the CPU backend from the same initial weights and prints the
// losses and how far the two LayerScale gammas end apart.
//
// This build links iif_cuda_emulated, so the "CUDA" run is the SIMT emulator. For a GPU, compile
// this file as CUDA (set_source_files_properties(... LANGUAGE CUDA)), link iif_cuda, and use
// --device cuda.
//
//   build-int/custom_layer [--n 512] [--epochs 3]
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/autodiff.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/ops.h"
#include "examples/layerscale.h"
#include "nn/datasets.h"
#include "nn/module.h"
#include "nn/optim.h"
#include "engine/rng.h"

using namespace iif;

namespace {

std::unique_ptr<nn::Sequential> build(Device dev) {
  nn::Init init;
  init.seed = 1;
  init.device = dev;
  auto m = std::make_unique<nn::Sequential>();
  m->add(std::make_unique<nn::Linear>(784, 32, true, init, 0));
  m->add(std::make_unique<example::LayerScale>(32, 0.1, init));
  m->add(std::make_unique<nn::ReLU>());
  m->add(std::make_unique<nn::Linear>(32, 10, true, init, 1));
  return m;
}

// Mini-batch SGD on the mean cross-entropy; returns each epoch's mean loss.
std::vector<double> train(nn::Sequential& m, const Tensor& x, const Tensor& t, int epochs) {
  SgdParams h;
  h.lr = 0.05;
  h.momentum = 0.9;
  nn::Sgd opt(m.named_parameters(), h);
  const int64_t n = x.dim(0), batch = 64;
  std::vector<double> losses;
  for (int e = 0; e < epochs; ++e) {
    const std::vector<int64_t> order = rng::permutation(n, 7, static_cast<uint64_t>(e));
    double sum = 0;
    for (int64_t b0 = 0; b0 < n; b0 += batch) {
      const std::vector<int64_t> idx(order.begin() + b0, order.begin() + std::min(n, b0 + batch));
      const Var xb(ops::gather_rows(x, idx));
      Var loss = ad::softmax_xent_mean(m.forward(ad::reshape(xb, {xb.shape()[0], 784})), ops::gather_rows(t, idx));
      sum += loss.value().item() * double(idx.size());
      opt.zero_grad();
      backward(loss);
      opt.step();
    }
    losses.push_back(sum / double(n));
  }
  return losses;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n = 512;
  int epochs = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--n")) n = std::stoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--epochs")) epochs = std::stoi(argv[i + 1]);
  }
  cuda::register_backend();
  const data::Dataset d = data::load_mnist("data/mnist", data::Split::train, n);
  const Tensor t = ops::one_hot(d.labels, d.num_classes, DType::f32, Device::cpu());
  std::vector<std::vector<double>> gammas;
  for (Device dev : {cuda::device(), Device::cpu()}) {
    auto m = build(dev);
    const std::vector<double> losses = train(*m, d.images.to(dev), t.to(dev), epochs);
    std::printf("%-26s", dev == Device::cpu() ? "cpu" : (cuda::emulated() ? "cuda (SIMT emulator)" : "cuda"));
    for (double l : losses) std::printf("  loss %.5f", l);
    std::printf("\n");
    auto* ls = dynamic_cast<example::LayerScale*>(&(*m)[1]);
    gammas.push_back(ls->gamma.value().to_vector());
  }
  double worst = 0;
  for (std::size_t c = 0; c < gammas[0].size(); ++c) worst = std::max(worst, std::fabs(gammas[0][c] - gammas[1][c]));
  std::printf("LayerScale gamma after training: max |cuda - cpu| = %.3g (float32 rounding)\n", worst);
  return 0;
}
