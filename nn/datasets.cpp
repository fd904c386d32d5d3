// MNIST and CIFAR-10 readers: IDX files through zlib (raw or gzip), CIFAR-10 binary records
// through plain streams; every check names the file so a bad download is easy to find.
#include "nn/datasets.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace iif {
namespace data {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kIdxImagesMagic = 2051;  // 0x00000803: unsigned byte, 3 dimensions
constexpr uint32_t kIdxLabelsMagic = 2049;  // 0x00000801: unsigned byte, 1 dimension
constexpr int64_t kNumClasses = 10;
constexpr int64_t kCifarSide = 32;
constexpr int64_t kCifarPixels = 3 * kCifarSide * kCifarSide;
constexpr int kCifarTrainBatches = 5;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// A file read through zlib, which passes uncompressed files through unchanged.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) fail(path, std::string("cannot open (") + std::strerror(errno) + ")");
  }
  ~GzReader() { gzclose(f_); }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Appends up to n bytes to out and returns how many came. Reads in chunks so that a header
  // claiming absurd sizes cannot make us allocate more than the file really holds.
  int64_t read(int64_t n, std::vector<uint8_t>& out) {
    constexpr int64_t kChunk = 1 << 20;
    int64_t got = 0;
    while (got < n) {
      const int64_t want = std::min(kChunk, n - got);
      const std::size_t at = out.size();
      out.resize(at + static_cast<std::size_t>(want));
      const int r = gzread(f_, out.data() + at, static_cast<unsigned>(want));
      if (r < 0) {
        int err = 0;
        fail(path_, std::string("read error: ") + gzerror(f_, &err));
      }
      out.resize(at + static_cast<std::size_t>(r));
      got += r;
      if (r < want) break;
    }
    return got;
  }
  // Why a read came up short, for the message: zlib reports a cut gzip stream as Z_BUF_ERROR.
  std::string short_read_note() {
    int err = 0;
    gzerror(f_, &err);
    if (err == Z_BUF_ERROR)
      return " (the gzip stream itself ends early: the .gz file is cut short)";
    return gzdirect(f_) ? "" : " (after decompression)";
  }
  bool compressed() { return !gzdirect(f_); }
  bool at_end() {
    std::vector<uint8_t> probe;
    return read(1, probe) == 0;
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
};

std::string magic_hint(uint32_t found, uint32_t expected) {
  if (found == kIdxLabelsMagic && expected == kIdxImagesMagic)
    return "; this looks like a labels file (IDX1) passed as images: use the *-images-idx3-ubyte "
           "file";
  if (found == kIdxImagesMagic && expected == kIdxLabelsMagic)
    return "; this looks like an images file (IDX3) passed as labels: use the *-labels-idx1-ubyte "
           "file";
  if ((found >> 16) == 0x1f8b)  // the gzip magic bytes 1f 8b
    return "; the content is itself gzip data (compressed twice?)";
  return "; not an IDX file, or damaged";
}

// Reads an IDX header of `header_bytes` bytes and checks its magic.
std::vector<uint8_t> read_idx_header(GzReader& f, const std::string& path, int64_t header_bytes,
                                     uint32_t magic, const char* kind) {
  std::vector<uint8_t> h;
  const int64_t got = f.read(header_bytes, h);
  if (got >= 4 && be32(h.data()) != magic)
    fail(path, "magic number is " + std::to_string(be32(h.data())) + ", expected " +
                   std::to_string(magic) + " (IDX " + kind + ")" +
                   magic_hint(be32(h.data()), magic));
  if (got < header_bytes)
    fail(path, "truncated header: an IDX " + std::string(kind) + " file starts with " +
                   std::to_string(header_bytes) + " header bytes, file has " + std::to_string(got) +
                   f.short_read_note());
  return h;
}

// -1 means "everything"; other negative values are most likely a bug in the caller.
void check_limit(const std::string& where, int64_t limit) {
  if (limit < -1)
    throw std::invalid_argument(where + ": limit " + std::to_string(limit) +
                                " must be -1 (everything) or >= 0");
}

std::string limit_message(int64_t limit, int64_t have, const std::string& what) {
  return "limit " + std::to_string(limit) + " is larger than the " + std::to_string(have) + " " +
         what;
}

// The first of `names` present in dir; otherwise an error listing every name looked for.
std::string find_file(const std::string& dir, const std::vector<std::string>& names,
                      const std::string& what) {
  for (const auto& n : names)
    if (fs::is_regular_file(fs::path(dir) / n)) return (fs::path(dir) / n).string();
  std::string msg = dir + ": no " + what + " found; looked for ";
  for (std::size_t i = 0; i < names.size(); ++i) msg += (i ? ", " : "") + names[i];
  if (!fs::is_directory(dir)) msg += " (the directory does not exist)";
  throw std::runtime_error(msg);
}

// Number of whole records in a CIFAR binary file; throws unless the size is a multiple.
int64_t cifar_record_count(const std::string& path) {
  std::error_code ec;
  const auto size = static_cast<int64_t>(fs::file_size(path, ec));
  if (ec) fail(path, "cannot read its size (" + ec.message() + ")");
  if (size % kCifarRecordBytes != 0) {
    std::string msg = "file size " + std::to_string(size) + " bytes is not a multiple of the " +
                      std::to_string(kCifarRecordBytes) +
                      "-byte CIFAR-10 record (1 label + 3072 pixels): " +
                      std::to_string(size / kCifarRecordBytes) + " whole records and " +
                      std::to_string(size % kCifarRecordBytes) + " bytes left over; truncated?";
    if (size > 0 && size % 3074 == 0) msg += " (CIFAR-100 records are 3074 bytes)";
    fail(path, msg);
  }
  return size / kCifarRecordBytes;
}

// Maps every byte value to its normalised float: ((x / 255) - mean) / std in float32, the
// same operations and order as torchvision's ToTensor + Normalize.
std::array<float, 256> normalise_table(float mean, float std_dev) {
  std::array<float, 256> t{};
  for (int x = 0; x < 256; ++x) t[x] = (static_cast<float>(x) / 255.0f - mean) / std_dev;
  return t;
}

}  // namespace

// ---- Dataset ------------------------------------------------------------------------------
Dataset Dataset::subset(const std::vector<int64_t>& index) const {
  if (images.device() != Device::cpu() || images.dtype() != DType::f32 || images.ndim() < 1)
    throw std::invalid_argument("Dataset::subset(" + name + "): images must be float32 on the CPU");
  const int64_t n = size();
  std::vector<int64_t> dims = images.shape().vec();
  const int64_t row = n ? images.numel() / n : 0;
  dims[0] = static_cast<int64_t>(index.size());
  Dataset out;
  out.images = Tensor::empty(Shape(dims), DType::f32);
  out.labels.resize(index.size());
  out.num_classes = num_classes;
  out.name = name;
  const float* src = images.data<float>();
  float* dst = out.images.data<float>();
  for (std::size_t i = 0; i < index.size(); ++i) {
    const int64_t k = index[i];
    if (k < 0 || k >= n)
      throw std::out_of_range("Dataset::subset(" + name + "): index[" + std::to_string(i) + "] = " +
                              std::to_string(k) + " is outside [0, " + std::to_string(n) + ")");
    std::memcpy(dst + i * row, src + k * row, static_cast<std::size_t>(row) * sizeof(float));
    out.labels[i] = labels[k];
  }
  return out;
}

Dataset Dataset::head(int64_t n) const {
  if (n < 0 || n > size())
    throw std::out_of_range("Dataset::head(" + name + "): n = " + std::to_string(n) +
                            " is outside [0, " + std::to_string(size()) + "]");
  std::vector<int64_t> index(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) index[i] = i;
  return subset(index);
}

// ---- raw readers --------------------------------------------------------------------------
IdxImages read_idx_images(const std::string& path, int64_t limit) {
  check_limit(path, limit);
  GzReader f(path);
  const std::vector<uint8_t> h = read_idx_header(f, path, 16, kIdxImagesMagic, "images");
  IdxImages r;
  r.header_count = be32(h.data() + 4);
  r.rows = be32(h.data() + 8);
  r.cols = be32(h.data() + 12);
  if (r.rows <= 0 || r.cols <= 0)
    fail(path, "header says images are " + std::to_string(r.rows) + "x" + std::to_string(r.cols) +
                   ", expected both sides > 0");
  if (limit > r.header_count) fail(path, limit_message(limit, r.header_count, "images it holds"));
  r.count = limit < 0 ? r.header_count : limit;
  const int64_t image_bytes = r.rows * r.cols;

  // An uncompressed file's size can be checked against the whole header at no cost.
  if (!f.compressed()) {
    const auto size = static_cast<int64_t>(fs::file_size(path));
    const int64_t want = 16 + r.header_count * image_bytes;
    if (size != want)
      fail(path, std::string(size < want ? "truncated: " : "too long: ") + "header says " +
                     std::to_string(r.header_count) + " images of " + std::to_string(r.rows) + "x" +
                     std::to_string(r.cols) + " = " + std::to_string(want) +
                     " bytes with the 16-byte header, file has " + std::to_string(size));
  }
  const int64_t got = f.read(r.count * image_bytes, r.pixels);
  if (got < r.count * image_bytes)
    fail(path, "truncated: header says " + std::to_string(r.header_count) + " images of " +
                   std::to_string(r.rows) + "x" + std::to_string(r.cols) + " = " +
                   std::to_string(r.header_count * image_bytes) +
                   " pixel bytes after the 16-byte header, file has " + std::to_string(got) +
                   f.short_read_note());
  // A compressed file read to its end must end there too (with a limit we stop early on purpose).
  if (limit < 0 && f.compressed() && !f.at_end())
    fail(path, "too long: more bytes follow the " + std::to_string(r.header_count) +
                   " images the header declares");
  return r;
}

std::vector<uint8_t> read_idx_labels(const std::string& path, int64_t limit,
                                     int64_t* header_count) {
  check_limit(path, limit);
  GzReader f(path);
  const std::vector<uint8_t> h = read_idx_header(f, path, 8, kIdxLabelsMagic, "labels");
  const int64_t count = be32(h.data() + 4);
  if (header_count) *header_count = count;
  if (limit > count) fail(path, limit_message(limit, count, "labels it holds"));
  const int64_t n = limit < 0 ? count : limit;
  std::vector<uint8_t> labels;
  const int64_t got = f.read(n, labels);
  if (got < n)
    fail(path, "truncated: header says " + std::to_string(count) + " labels = " +
                   std::to_string(count) + " bytes after the 8-byte header, file has " +
                   std::to_string(got) + f.short_read_note());
  if (limit < 0 && !f.at_end())
    fail(path, "too long: more bytes follow the " + std::to_string(count) +
                   " labels the header declares");
  return labels;
}

CifarRecords read_cifar_bin(const std::string& path, int64_t limit) {
  check_limit(path, limit);
  const int64_t have = cifar_record_count(path);
  if (limit > have) fail(path, limit_message(limit, have, "records it holds"));
  CifarRecords r;
  r.count = limit < 0 ? have : limit;
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open (") + std::strerror(errno) + ")");
  std::vector<uint8_t> buf(static_cast<std::size_t>(r.count * kCifarRecordBytes));
  in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  if (in.gcount() != static_cast<std::streamsize>(buf.size()))
    fail(path, "read " + std::to_string(in.gcount()) + " of " + std::to_string(buf.size()) +
                   " bytes; did the file change while being read?");
  r.labels.resize(static_cast<std::size_t>(r.count));
  r.pixels.resize(static_cast<std::size_t>(r.count * kCifarPixels));
  for (int64_t i = 0; i < r.count; ++i) {
    const uint8_t* rec = buf.data() + i * kCifarRecordBytes;
    if (rec[0] >= kNumClasses)
      fail(path, "record " + std::to_string(i) + " (byte offset " +
                     std::to_string(i * kCifarRecordBytes) + ") has label " +
                     std::to_string(rec[0]) + ", expected 0..9");
    r.labels[i] = rec[0];
    std::memcpy(r.pixels.data() + i * kCifarPixels, rec + 1, kCifarPixels);
  }
  return r;
}

// ---- loaders ------------------------------------------------------------------------------
Dataset load_mnist(const std::string& dir, Split split, int64_t limit) {
  check_limit("load_mnist(" + dir + ")", limit);
  const std::string prefix = split == Split::train ? "train" : "t10k";
  const std::string images_name = prefix + "-images-idx3-ubyte";
  const std::string labels_name = prefix + "-labels-idx1-ubyte";
  const std::string what = split == Split::train ? "MNIST training" : "MNIST test";
  const std::string images_path =
      find_file(dir, {images_name + ".gz", images_name}, what + " images");
  const std::string labels_path =
      find_file(dir, {labels_name + ".gz", labels_name}, what + " labels");

  // Labels are small (one byte each): read them all so counts compare before any limit.
  int64_t label_count = 0;
  const std::vector<uint8_t> labels = read_idx_labels(labels_path, -1, &label_count);
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i] >= kNumClasses)
      fail(labels_path, "label at index " + std::to_string(i) + " is " + std::to_string(labels[i]) +
                            ", expected 0..9");
  const IdxImages im = read_idx_images(images_path, limit);
  if (im.header_count != label_count)
    throw std::runtime_error(images_path + " holds " + std::to_string(im.header_count) +
                             " images but " + labels_path + " holds " +
                             std::to_string(label_count) + " labels; the counts must match");

  Dataset d;
  d.name = split == Split::train ? "mnist-train" : "mnist-test";
  d.num_classes = kNumClasses;
  d.images = Tensor::empty({im.count, 1, im.rows, im.cols}, DType::f32);
  const auto table = normalise_table(kMnistMean, kMnistStd);
  float* out = d.images.data<float>();
  for (std::size_t i = 0; i < im.pixels.size(); ++i) out[i] = table[im.pixels[i]];
  d.labels.assign(labels.begin(), labels.begin() + im.count);
  return d;
}

Dataset load_cifar10(const std::string& dir, Split split, int64_t limit) {
  check_limit("load_cifar10(" + dir + ")", limit);
  std::vector<std::string> files;
  if (split == Split::test) {
    files.push_back(find_file(dir, {"test_batch.bin"}, "CIFAR-10 test batch"));
  } else {
    files.push_back(find_file(dir, {"data_batch_1.bin"}, "CIFAR-10 training batch"));
    // Batches are used in order; a gap would silently reorder the data, so refuse it.
    int k = 2;
    for (; k <= kCifarTrainBatches; ++k) {
      const fs::path p = fs::path(dir) / ("data_batch_" + std::to_string(k) + ".bin");
      if (!fs::is_regular_file(p)) break;
      files.push_back(p.string());
    }
    for (int j = k + 1; j <= kCifarTrainBatches; ++j)
      if (fs::is_regular_file(fs::path(dir) / ("data_batch_" + std::to_string(j) + ".bin")))
        throw std::runtime_error(dir + ": data_batch_" + std::to_string(j) +
                                 ".bin is present but data_batch_" + std::to_string(k) +
                                 ".bin is missing; batches are read in order from 1");
  }
  int64_t total = 0;
  for (const auto& f : files) total += cifar_record_count(f);
  if (limit > total) {
    std::string names;
    for (std::size_t i = 0; i < files.size(); ++i) names += (i ? ", " : "") + files[i];
    throw std::runtime_error(limit_message(limit, total, "records in " + names));
  }
  const int64_t n = limit < 0 ? total : limit;

  Dataset d;
  d.name = split == Split::train ? "cifar10-train" : "cifar10-test";
  d.num_classes = kNumClasses;
  d.images = Tensor::empty({n, 3, kCifarSide, kCifarSide}, DType::f32);
  d.labels.reserve(static_cast<std::size_t>(n));
  std::array<std::array<float, 256>, 3> table;
  for (int c = 0; c < 3; ++c) table[c] = normalise_table(kCifarMean[c], kCifarStd[c]);
  float* out = d.images.data<float>();
  const int64_t plane = kCifarSide * kCifarSide;
  for (const auto& f : files) {
    const int64_t remaining = n - d.size();
    if (remaining == 0) break;
    const CifarRecords r = read_cifar_bin(f, std::min(remaining, cifar_record_count(f)));
    for (int64_t i = 0; i < r.count; ++i) {
      const uint8_t* px = r.pixels.data() + i * kCifarPixels;
      float* dst = out + (d.size() + i) * kCifarPixels;
      for (int64_t k = 0; k < kCifarPixels; ++k) dst[k] = table[k / plane][px[k]];
    }
    d.labels.insert(d.labels.end(), r.labels.begin(), r.labels.end());
  }
  return d;
}

}  // namespace data
}  // namespace iif
