// Trains a tiny MLP through the installed headers and library; exits 0 if the loss fell.
#include <cstdio>

#include "engine/ops.h"
#include "nn/models.h"
#include "nn/trainer.h"

int main() {
  using namespace iif;
  const int64_t n = 64;
  std::vector<double> x(n * 4), t(n * 2, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < 4; ++j) x[i * 4 + j] = ((i * 7 + j * 3) % 11) / 11.0 - 0.5;
    t[i * 2 + (x[i * 4] > 0 ? 1 : 0)] = 1.0;
  }
  auto m = nn::make_model("mlp:4-8-2,dropout=0", {});
  nn::TrainConfig c;
  c.epochs = 30;
  c.batch = 16;
  c.progress = false;
  const auto r = nn::train(*m, Tensor::from_vector(x, {n, 4}), Tensor::from_vector(t, {n, 2}), c);
  std::printf("loss %.4f -> %.4f\n", r.epoch_loss.front(), r.epoch_loss.back());
  return r.epoch_loss.back() < r.epoch_loss.front() ? 0 : 1;
}
