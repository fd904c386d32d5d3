// Model builders: the paper's MNIST MLP (784-128-64-10, dropout 0.1) and any MLP given by
// its layer sizes, named like the PyTorch module they mirror ("layers.0.weight", ...).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace iif {
namespace nn {

// Flatten, then Linear / ReLU / Dropout repeated, ending in a Linear; like
//   self.layers = nn.Sequential(nn.Linear(784,128), nn.ReLU(), nn.Dropout(0.1), ...)
class Mlp final : public Module {
 public:
  Mlp(std::vector<int64_t> sizes, double dropout, bool bias, const Init& init);
  Var forward(const Var& x) override;
  std::string kind() const override { return "Mlp"; }
  void collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) override;
  void collect_parametric_layers(std::vector<ParametricLayer*>& out) override;
  void set_training(bool on) override;
  // Re-seeds every dropout layer (mask streams restart).
  void set_dropout_seed(uint64_t seed);
  const std::vector<int64_t>& sizes() const { return sizes_; }
  double dropout() const { return dropout_; }
  // A new model of the same spec with a copy of these parameters (same dtype and device).
  std::unique_ptr<Mlp> clone() const;
  // Copies the parameter values of `other` (same spec) into this model.
  void copy_parameters_from(const Mlp& other);
  // The spec string make_model() accepts, e.g. "mlp:784-128-64-10,dropout=0.1".
  std::string spec() const;
  Sequential layers;

 private:
  std::vector<int64_t> sizes_;
  double dropout_;
  bool bias_;
};

// Parses a model spec: "mlp" (the paper's 784-128-64-10 with dropout 0.1),
// "mlp:784-256-10", "mlp:784-128-64-10,dropout=0.2", "linear:10" (regression, one output, no
// intercept). Throws std::invalid_argument naming the spec and what was expected.
std::unique_ptr<Mlp> make_model(const std::string& spec, const Init& init);

}  // namespace nn
}  // namespace iif
