// Image classification datasets read from their standard files: MNIST (IDX, raw or gzip) and
// CIFAR-10 (the "binary version"), normalised into an (N, C, H, W) float32 tensor on the CPU.
// Every reader throws std::runtime_error naming the file, the field and what was expected.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace iif {
namespace data {

// torchvision's usual normalisation constants, applied after scaling pixels to [0, 1].
constexpr float kMnistMean = 0.1307f;
constexpr float kMnistStd = 0.3081f;
constexpr float kCifarMean[3] = {0.4914f, 0.4822f, 0.4465f};
constexpr float kCifarStd[3] = {0.2470f, 0.2435f, 0.2616f};

struct Dataset {
  Tensor images;                // (N, C, H, W) float32 on the CPU, normalised
  std::vector<int64_t> labels;  // N entries in [0, num_classes)
  int64_t num_classes = 10;
  std::string name;  // e.g. "mnist-train"

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  // A copy holding rows index[0], index[1], ... in that order (repeats allowed).
  Dataset subset(const std::vector<int64_t>& index) const;
  // A copy of the first n rows.
  Dataset head(int64_t n) const;
};

enum class Split { train, test };

// `dir` holds the official file names (see data/README.md); limit >= 0 keeps the first `limit`
// examples and reads no further than it needs to; it must not exceed what the files hold.
Dataset load_mnist(const std::string& dir, Split split, int64_t limit = -1);
Dataset load_cifar10(const std::string& dir, Split split, int64_t limit = -1);

// ---- raw readers the loaders are built on --------------------------------------------------

// An IDX3 image file (magic 2051): count images of rows x cols uint8 pixels, row-major.
struct IdxImages {
  int64_t count = 0;  // images read (after limit); header_count is what the file declares
  int64_t header_count = 0;
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // count * rows * cols
};
// Raw or gzip-compressed (zlib reads both). limit < 0 reads all.
IdxImages read_idx_images(const std::string& path, int64_t limit = -1);
// An IDX1 label file (magic 2049). `header_count` (if given) receives the declared count.
std::vector<uint8_t> read_idx_labels(const std::string& path, int64_t limit = -1,
                                     int64_t* header_count = nullptr);

// A CIFAR-10 binary file: records of 1 label byte then 1024 R, 1024 G, 1024 B bytes.
constexpr int64_t kCifarRecordBytes = 3073;
struct CifarRecords {
  int64_t count = 0;
  std::vector<uint8_t> labels;  // count, each in [0, 10)
  std::vector<uint8_t> pixels;  // count * 3 * 32 * 32, channel-major per record
};
CifarRecords read_cifar_bin(const std::string& path, int64_t limit = -1);

}  // namespace data
}  // namespace iif
