// Models: nn::Model, the root of a module tree that everything downstream (trainer,
// checkpoints, featurizer, curvature, every attribution method, IIF) takes, and the model
// registry that turns a spec string into one. Built in: the paper's MNIST MLP (784-128-64-10,
// dropout 0.1), any MLP given by its layer sizes, and linear regression; a user registers their
// own model kind with register_model() and it works everywhere a spec is accepted.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"

namespace iif {
namespace nn {

// A model: a module tree that a spec string rebuilds. What a model must say about itself is its
// spec (the string make_model() accepts to build one of the same architecture); cloning, copying
// state, dtype and device are written once here over the module tree.
class Model : public Module {
 public:
  // The spec string make_model() accepts, e.g. "mlp:784-128-64-10,dropout=0.1,bias=1".
  virtual std::string spec() const = 0;
  // A new model of the same spec with a copy of these parameters and buffers, in the same mode,
  // dtype and device (built by make_model(spec()) with init seed 0, then overwritten).
  std::unique_ptr<Model> clone() const;
  // Copies the parameter and buffer values of `other` (same spec) into this model.
  void copy_parameters_from(const Model& other);
  // The dtype and device of the first parameter (every parameter shares them).
  DType dtype() const;
  Device device() const;
};

// A parsed spec: "<kind>[:<arg>][,<key>=<value>]...", e.g. "mlp:784-256-10,dropout=0.2".
struct ModelSpec {
  std::string text;  // the whole spec, for messages
  std::string kind, arg;
  std::vector<std::pair<std::string, std::string>> options;  // in the order given
};
ModelSpec parse_model_spec(const std::string& spec);
// The dash-separated positive integers of a spec's argument ("784-128-10"); `what` names one of
// them in the error ("layer size", "channel count"), which also names the whole spec.
std::vector<int64_t> parse_dims(const ModelSpec& spec, const std::string& what);

// Builds a model of a registered kind from its parsed spec. Throws std::invalid_argument naming
// spec.text and what was expected when the argument or an option does not fit.
using ModelFactory = std::function<std::unique_ptr<Model>(const ModelSpec& spec, const Init& init)>;
// Registers (or replaces) a model kind; `usage` is shown when a spec names an unknown kind, e.g.
// "mlp[:<sizes>][,dropout=<p>][,bias=0|1]".
void register_model(const std::string& kind, ModelFactory factory, const std::string& usage);

// Parses a model spec and builds it with the registered factory: "mlp" (the paper's
// 784-128-64-10 with dropout 0.1), "mlp:784-256-10", "mlp:784-128-64-10,dropout=0.2",
// "linear:10" (regression, one output, no intercept), or any registered kind. Throws
// std::invalid_argument naming the spec and what was expected.
std::unique_ptr<Model> make_model(const std::string& spec, const Init& init);

// Flatten, then Linear / ReLU / Dropout repeated, ending in a Linear; like
//   self.layers = nn.Sequential(nn.Linear(784,128), nn.ReLU(), nn.Dropout(0.1), ...)
class Mlp final : public Model {
 public:
  Mlp(std::vector<int64_t> sizes, double dropout, bool bias, const Init& init);
  Var forward(const Var& x) override;
  std::string kind() const override { return "Mlp"; }
  void own_children(std::vector<std::pair<std::string, Module*>>& out) override {
    out.push_back({"layers", &layers});
  }
  std::string spec() const override;
  const std::vector<int64_t>& sizes() const { return sizes_; }
  double dropout() const { return dropout_; }
  bool has_bias() const { return bias_; }
  Sequential layers;

 private:
  std::vector<int64_t> sizes_;
  double dropout_;
  bool bias_;
};

}  // namespace nn
}  // namespace iif
