// ResNet-9 as the paper specifies it (Table 5) in the Myrtle/DAWNBench layout (DESIGN.md section
// 7), built from the layers of nn/vision.h. Spec:
//   resnet9[:c1-c2-c3-c4-c5-c6-c7-c8][,classes=10][,dropout=0.1][,scale=<s>]
// Default channels 64-128-128-128-256-512-512-512, 10 classes, dropout 0.1 before the
// classifier: 6,573,130 parameters. Smaller channel lists make quick test models.
// Module tree (PyTorch state-dict names in brackets):
//   0 conv_bn(3, c1)            [0.0.weight, 0.1.weight, 0.1.bias, 0.1.running_mean, ...]
//   1 conv_bn(c1, c2)   2 MaxPool2d(2)
//   3 Residual(conv_bn(c2, c3), conv_bn(c3, c4))   (c4 = c2)   [3.0.0.weight, 3.1.1.bias, ...]
//   4 conv_bn(c4, c5)   5 MaxPool2d(2)
//   6 conv_bn(c5, c6)   7 MaxPool2d(2)
//   8 Residual(conv_bn(c6, c7), conv_bn(c7, c8))   (c8 = c6)
//   9 GlobalMaxPool2d   10 Flatten   11 Dropout(p)   12 Linear(c8, classes)   [13 Scale(s)]
// with conv_bn(a, b) = Sequential(Conv2d(a, b, 3, padding 1, no bias), BatchNorm2d(b), ReLU).
// docs/resnet9.md gives the PyTorch module these names load into.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/models.h"

namespace iif {
namespace nn {

class ResNet9 final : public Model {
 public:
  ResNet9(std::vector<int64_t> channels, int64_t classes, double dropout, double scale, const Init& init);
  Var forward(const Var& x) override { return net.forward(x); }
  std::string kind() const override { return "ResNet9"; }
  // The layers are the model's direct children (names "0", "1", ... as an nn.Sequential).
  void own_children(std::vector<std::pair<std::string, Module*>>& out) override { net.own_children(out); }
  std::string spec() const override;
  const std::vector<int64_t>& channels() const { return channels_; }
  Sequential net;

 private:
  std::vector<int64_t> channels_;
  int64_t classes_;
  double dropout_, scale_;
};

// The registry's factory for "resnet9" (nn/models.cpp).
std::unique_ptr<Model> make_resnet9(const ModelSpec& spec, const Init& init);

}  // namespace nn
}  // namespace iif
