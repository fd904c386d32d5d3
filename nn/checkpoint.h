// Model checkpoints as safetensors files, tensors named like PyTorch's state_dict
// ("layers.0.weight"), so they load with safetensors.torch.load_file in Python as well.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "nn/module.h"

namespace iif {
namespace nn {

// Writes every parameter and buffer (plus `extra` tensors, e.g. optimizer state under "optim.") and the
// string metadata. The write is atomic: a crash leaves the previous file intact.
void save_checkpoint(const std::string& path, Module& model,
                     const std::map<std::string, std::string>& metadata = {},
                     const std::vector<std::pair<std::string, Tensor>>& extra = {});

// Loads parameters and buffers into `model` (converted to each one's dtype and device). Throws
// std::runtime_error naming the file, the tensor and the expected shape when one is missing or
// its shape does not fit the model; then nothing is written. Returns the file's metadata.
std::map<std::string, std::string> load_checkpoint(const std::string& path, Module& model);

// Tensors of a checkpoint whose names start with `prefix` (prefix removed).
std::vector<std::pair<std::string, Tensor>> load_checkpoint_extra(const std::string& path,
                                                                   const std::string& prefix);

// The model spec recorded under metadata "model"; throws naming the file if there is none.
std::string checkpoint_model_spec(const std::string& path);

}  // namespace nn
}  // namespace iif
