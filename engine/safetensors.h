// Reading and writing the safetensors format (Hugging Face): an 8-byte little-endian header
// length N, N bytes of JSON naming each tensor's dtype, shape and byte range, then the data.
// Files written here load in PyTorch's `safetensors.torch.load_file`, and back.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace iif {
namespace safetensors {

// Writes F32 and F64 tensors (from any device) and string metadata (the "__metadata__" entry)
// to path.tmp, then renames it to path, so a crash never leaves a half-written file at path.
// Throws std::invalid_argument for bad input (duplicate, empty or reserved names, undefined
// tensors) and std::runtime_error for I/O failures.
void save(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata = {});

struct File {
  std::string path;
  std::vector<std::pair<std::string, Tensor>> tensors;  // in the file's data order, on the CPU
  std::map<std::string, std::string> metadata;

  bool has(const std::string& name) const;
  // Throws std::runtime_error naming the file and the tensor and listing the names present.
  const Tensor& get(const std::string& name) const;
};

// Reads F32 and F64 tensors as they are, and F16 and BF16 converted to float32; other dtypes
// are rejected. Every header field is checked before use (lengths against the file, byte
// ranges against shape and dtype and against each other), and std::runtime_error names the
// file, the tensor and the field.
File load(const std::string& path);

}  // namespace safetensors
}  // namespace iif
