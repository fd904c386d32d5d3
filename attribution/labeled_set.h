// A labelled set of inputs as the attribution methods see a training or test set.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace iif {
namespace attr {

// x (N, ...) inputs and integer class labels in [0, num_classes).
struct LabeledSet {
  Tensor x;
  std::vector<int64_t> labels;
  int64_t num_classes = 10;
  int64_t size() const { return x.defined() ? x.dim(0) : 0; }
};

}  // namespace attr
}  // namespace iif
