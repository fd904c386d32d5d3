// Layers and containers: Module (the interface), Linear, ReLU, Dropout, Flatten, Sequential.
// Parametric layers record, for the last batch, their input activations `a` and (after a
// backward pass) their output cotangents `delta`: all that per-sample gradients need
// (DESIGN.md section 4).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/autodiff.h"
#include "engine/tensor.h"

namespace iif {
namespace nn {

class ParametricLayer;

struct NamedParameter {
  std::string name;  // PyTorch-style, e.g. "layers.0.weight"
  Var* var;
};

// State a module saves and loads but does not train by gradient descent, e.g. BatchNorm's
// running_mean. Named like PyTorch's state_dict entries.
struct NamedBuffer {
  std::string name;
  Tensor* tensor;
};

// The one interface of every layer and container. A layer declares what is its own (its
// parameters, buffers, children, and what it does with a seed); every traversal (names with
// PyTorch's prefixes, train/eval mode, dropout seeding, the layers attribution reads) is written
// once here over that declaration, so a new layer overrides forward/kind and what it owns.
class Module {
 public:
  virtual ~Module() = default;
  virtual Var forward(const Var& x) = 0;
  virtual std::string kind() const = 0;

  // ---- what a module declares about itself (not about its children) ----
  // Its own parameters, names relative to it ("weight", "bias").
  virtual void own_parameters(std::vector<NamedParameter>& out) { (void)out; }
  // Its own buffers ("running_mean", ...).
  virtual void own_buffers(std::vector<NamedBuffer>& out) { (void)out; }
  // Its direct children, in forward order, with their names ("0", "layers").
  virtual void own_children(std::vector<std::pair<std::string, Module*>>& out) { (void)out; }
  // Restarts its random streams with `seed` (Dropout); no-op for deterministic layers.
  virtual void reseed(uint64_t seed) { (void)seed; }

  // ---- traversals over the module tree (pre-order, children in declared order) ----
  // Calls fn(prefix, module) for this module (prefix "") and every descendant (prefix "layers.0.").
  void visit(const std::function<void(const std::string& prefix, Module& m)>& fn);
  std::vector<NamedParameter> named_parameters();
  std::vector<NamedBuffer> named_buffers();
  // The layers whose per-sample gradients attribution reads, in forward order.
  std::vector<ParametricLayer*> parametric_layers();
  int64_t num_parameters();
  // Train (dropout on, batch statistics) or evaluation mode, for the whole tree.
  void set_training(bool on);
  bool training() const { return training_; }
  // Re-seeds every random layer of the tree (dropout mask streams restart).
  void set_dropout_seed(uint64_t seed);

 protected:
  bool training_ = true;
};

// A layer with parameters whose per-sample gradient is formed from (a, delta).
// It records, for the last batch, what it reads (`a`, e.g. a Linear's input (B, in), a Conv2d's
// patches) and the cotangent of what it writes (`delta`), and says how a sample's gradient of its
// own parameters is formed from them: that is the whole contract attribution needs from a layer
// (the featurizer projects these gradients without holding N x M of them).
class ParametricLayer : public Module {
 public:
  // What the layer recorded in the last forward pass (its own layout: dim 0 is per sample, or
  // per (sample, position) for a convolution).
  const Tensor& input_activations() const { return last_input_; }
  // Output cotangents dL/dy of the last backward pass, in the recorded output's layout;
  // undefined before one.
  const Tensor& output_cotangents() const;
  // The recorded output's variable (undefined before a recorded forward): a backward pass that
  // asks for the gradients of these alone (grad(..., wrt)) gives every layer its cotangent and
  // forms no parameter gradient (attribution's sweeps).
  const Var& recorded_output() const { return last_output_; }
  // Whether the last forward's activations are recorded (on by default).
  void set_recording(bool on) { recording_ = on; }
  bool recording() const { return recording_; }
  // Per-sample gradients of this layer's own parameters (own_parameters() order, each tensor
  // flattened row-major) for samples [s0, s1) of a recorded `a` and `delta`: out (s1 - s0, m)
  // with m the layer's parameter count, in a's dtype and on its device.
  virtual void per_sample_gradients(const Tensor& a, const Tensor& delta, int64_t s0, int64_t s1,
                                    Tensor& out) const = 0;
  // Samples in a recorded `a` (dim 0 of it, unless a layer records per position).
  virtual int64_t samples_of(const Tensor& a) const { return a.dim(0); }
  // A layer that is a linear map y = a W^T (+ b) of its recorded rows, applied at `positions`
  // rows per sample (Conv2d: a = im2col patches, one row per output pixel), says so here, with
  // W (out, in) row-major and then the bias in own_parameters() order: attribution then projects
  // its per-sample gradients fused with the random projection (ops::linear_project), never
  // forming them. Layers without that form return false (per_sample_gradients serves them).
  struct LinearMap {
    int64_t in = 0, out = 0, positions = 0;
    bool bias = false;
  };
  virtual bool linear_map(const Tensor& a, LinearMap* map) const {
    (void)a;
    (void)map;
    return false;
  }

 protected:
  void record(const Tensor& input, const Var& output);
  Tensor last_input_;
  Var last_output_;
  bool recording_ = true;
};

// out (b, p + q) = [w (b, p) | v (b, q)] row by row: a layer's per-sample gradient of two
// parameter tensors (a weight and its bias, BatchNorm's two vectors). Through the host: those
// second tensors are small.
void join_columns(const Tensor& w, const Tensor& v, Tensor& out);

// Turns off the recording of every parametric layer of a module tree for a scope (inference,
// curvature products: nothing reads the layers' (a, delta) there, and a convolution's recorded
// patches are the largest tensor of its forward pass), and restores it after.
class RecordingPause {
 public:
  explicit RecordingPause(Module& m) : layers_(m.parametric_layers()) {
    for (auto* l : layers_) {
      was_.push_back(l->recording());
      l->set_recording(false);
    }
  }
  ~RecordingPause() {
    for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i]->set_recording(was_[i]);
  }
  RecordingPause(const RecordingPause&) = delete;
  RecordingPause& operator=(const RecordingPause&) = delete;

 private:
  std::vector<ParametricLayer*> layers_;
  std::vector<bool> was_;
};

struct Init {
  uint64_t seed = 0;
  DType dtype = DType::f32;
  Device device = Device::cpu();
};

// U(-bound, bound) entries of the given shape from the counter RNG at (init.seed, stream):
// PyTorch's default initialisation of Linear and Conv2d (bound = 1/sqrt(fan_in)).
Tensor uniform_init(const Shape& shape, double bound, const Init& init, uint64_t stream);

// y = x W^T + b, W (out, in), b (out): torch.nn.Linear's layout and default initialisation
// U(-1/sqrt(in), 1/sqrt(in)) for both, drawn from the counter RNG with stream `stream`.
class Linear final : public ParametricLayer {
 public:
  Linear(int64_t in, int64_t out, bool bias, const Init& init, uint64_t stream);
  Var forward(const Var& x) override;
  std::string kind() const override { return "Linear"; }
  void own_parameters(std::vector<NamedParameter>& out) override;
  void per_sample_gradients(const Tensor& a, const Tensor& delta, int64_t s0, int64_t s1,
                            Tensor& out) const override;
  Var weight, bias;
  int64_t in_features, out_features;
};

class ReLU final : public Module {
 public:
  Var forward(const Var& x) override { return ad::relu(x); }
  std::string kind() const override { return "ReLU"; }
};

// Inverted dropout: in training, keeps each entry with probability 1-p and scales by 1/(1-p).
// The mask is drawn from the counter RNG at (seed, stream = (tag << 32) + call index), so a
// seed fixes every mask of a training run; reseed restarts the call count.
class Dropout final : public Module {
 public:
  Dropout(double p, uint64_t seed, uint64_t tag);
  Var forward(const Var& x) override;
  std::string kind() const override { return "Dropout"; }
  void reseed(uint64_t seed) override { seed_ = seed; calls_ = 0; }
  double p() const { return p_; }

 private:
  double p_;
  uint64_t seed_, tag_, calls_ = 0;
};

// (B, ...) -> (B, prod(...))
class Flatten final : public Module {
 public:
  Var forward(const Var& x) override;
  std::string kind() const override { return "Flatten"; }
};

// Runs its children in order; names parameters "<index>.<name>" like torch.nn.Sequential.
class Sequential : public Module {
 public:
  Sequential() = default;
  void add(std::unique_ptr<Module> m) { children_.push_back(std::move(m)); }
  Var forward(const Var& x) override;
  std::string kind() const override { return "Sequential"; }
  void own_children(std::vector<std::pair<std::string, Module*>>& out) override;
  std::size_t size() const { return children_.size(); }
  Module& operator[](std::size_t i) { return *children_.at(i); }

 private:
  std::vector<std::unique_ptr<Module>> children_;
};

// y = x + (children in order)(x): a residual branch. Its children are named "0", "1", ... like
// a Sequential's, as the PyTorch module
//   class Residual(nn.Sequential):
//       def forward(self, x): return x + super().forward(x)
class Residual final : public Sequential {
 public:
  Var forward(const Var& x) override;
  std::string kind() const override { return "Residual"; }
};

}  // namespace nn
}  // namespace iif
