// NumPy .npy files (format versions 1.0, 2.0, 3.0 on read; 1.0 on write): the interchange
// format for tensors, scores and index lists (spec: the docstring of numpy/lib/format.py).
// Only little-endian, C-order arrays of up to 4 dims; every error names the file and the field.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace iif {
namespace npy {

// Writes '<f4' or '<f8', fortran_order False, t's shape (copied to the host first if needed).
// Writes path + ".tmp" and renames it, so an interrupted write never leaves a half file at path.
void save(const std::string& path, const Tensor& t);

// Writes '<i8' values with the given shape (any number of dims; product must equal v.size()).
void save_i64(const std::string& path, const std::vector<int64_t>& v,
              const std::vector<int64_t>& shape);

// Reads a CPU tensor: '<f4' -> f32, '<f8' -> f64; integer dtypes ('|i1', '<i2'..'<i8',
// '|u1', '<u2'..'<u8') and '|b1' -> f64 (integers above 2^53 round).
Tensor load(const std::string& path);

// Reads an integer or boolean array as int64, flattened in C order; its shape goes to *shape.
std::vector<int64_t> load_i64(const std::string& path, std::vector<int64_t>* shape = nullptr);

}  // namespace npy
}  // namespace iif
