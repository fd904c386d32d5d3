// Tests for nn/datasets: the committed MNIST and CIFAR-10 subsets against facts checkable
// without this code, and every error the readers raise, each on a small damaged file.
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "nn/datasets.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace iif;
using namespace iif::data;
using Bytes = std::vector<uint8_t>;

using iif_test::error_of;
using iif_test::has;

namespace {

const std::string kDataDir = std::string(IIF_SOURCE_DIR) + "/data";
// Developers and CI also see the full files here (see /work/shared/data/README.md).
const std::string kSharedDir = std::string(IIF_SOURCE_DIR) + "/../shared/data";

// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("iif_test_data_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

void write_raw(const std::string& path, const Bytes& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  REQUIRE(out.good());
}

Bytes gzip_bytes(const Bytes& b) {
  // zlib's gz* writer, so that the test needs no gzip program.
  const fs::path tmp =
      fs::temp_directory_path() / ("iif_gz_" + std::to_string(std::random_device{}()));
  gzFile f = gzopen(tmp.string().c_str(), "wb");
  REQUIRE(f != nullptr);
  if (!b.empty()) REQUIRE(gzwrite(f, b.data(), static_cast<unsigned>(b.size())) == int(b.size()));
  gzclose(f);
  std::ifstream in(tmp, std::ios::binary);
  Bytes out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove(tmp);
  return out;
}

void put_be32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}

// An IDX3 image file whose header declares `count` images but holds `stored` of them.
Bytes idx_images(uint32_t count, uint32_t rows, uint32_t cols, uint32_t stored,
                 uint32_t magic = 2051) {
  Bytes b;
  put_be32(b, magic);
  put_be32(b, count);
  put_be32(b, rows);
  put_be32(b, cols);
  std::mt19937 rng(7);  // incompressible pixels, so a cut .gz really loses data
  for (uint32_t i = 0; i < stored * rows * cols; ++i) b.push_back(static_cast<uint8_t>(rng()));
  return b;
}

Bytes idx_labels(const Bytes& labels, uint32_t magic = 2049) {
  Bytes b;
  put_be32(b, magic);
  put_be32(b, static_cast<uint32_t>(labels.size()));
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

Bytes cifar_records(const Bytes& labels) {
  Bytes b;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    b.push_back(labels[i]);
    for (int k = 0; k < 3072; ++k) b.push_back(static_cast<uint8_t>(i * 31 + k));
  }
  return b;
}



Bytes read_file_bytes(const std::string& path, std::size_t n) {
  std::ifstream in(path, std::ios::binary);
  Bytes b(n);
  in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(n));
  REQUIRE(in.gcount() == static_cast<std::streamsize>(n));
  return b;
}

std::vector<int64_t> histogram(const Dataset& d) {
  std::vector<int64_t> h(static_cast<std::size_t>(d.num_classes), 0);
  for (int64_t y : d.labels) ++h.at(static_cast<std::size_t>(y));
  return h;
}

void check_same(const Dataset& a, const Dataset& b) {
  REQUIRE(a.images.shape() == b.images.shape());
  CHECK(a.labels == b.labels);
  CHECK(std::equal(a.images.data<float>(), a.images.data<float>() + a.images.numel(),
                   b.images.data<float>()));
}

}  // namespace

TEST_CASE("committed MNIST subset: counts, shapes and known labels") {
  const Dataset train = load_mnist(kDataDir + "/mnist", Split::train);
  const Dataset test = load_mnist(kDataDir + "/mnist", Split::test);
  CHECK(train.name == "mnist-train");
  CHECK(test.name == "mnist-test");
  CHECK(train.images.shape() == Shape({10000, 1, 28, 28}));
  CHECK(test.images.shape() == Shape({2000, 1, 28, 28}));
  CHECK(train.size() == 10000);
  CHECK(test.size() == 2000);
  CHECK(train.num_classes == 10);
  CHECK(train.images.dtype() == DType::f32);

  // The first training labels of MNIST, as printed in countless tutorials.
  const std::vector<int64_t> first = {5, 0, 4, 1, 9, 2, 1, 3, 1, 4};
  CHECK(std::vector<int64_t>(train.labels.begin(), train.labels.begin() + 10) == first);
  // ... and of the test set: 7 2 1 0 4 1 4 9 5 9.
  const std::vector<int64_t> first_test = {7, 2, 1, 0, 4, 1, 4, 9, 5, 9};
  CHECK(std::vector<int64_t>(test.labels.begin(), test.labels.begin() + 10) == first_test);

  for (const Dataset* d : {&train, &test}) {
    const auto h = histogram(*d);
    int64_t sum = 0;
    for (int64_t c : h) {
      CHECK(c > 0);  // every digit occurs in a few thousand images
      sum += c;
    }
    CHECK(sum == d->size());
    // Pixels 0 and 255 both occur; normalised they are (0 - mean)/std and (1 - mean)/std.
    // Tolerance: one float32 rounding of a value near 3 (1.2e-7 relative), with margin.
    const float* p = d->images.data<float>();
    const auto [lo, hi] = std::minmax_element(p, p + d->images.numel());
    CHECK(*lo == doctest::Approx((0.0 - 0.1307) / 0.3081).epsilon(1e-6));
    CHECK(*hi == doctest::Approx((1.0 - 0.1307) / 0.3081).epsilon(1e-6));
  }
}

TEST_CASE("committed CIFAR-10 subset: counts, shapes and the first record read directly") {
  const std::string dir = kDataDir + "/cifar10";
  const Dataset train = load_cifar10(dir, Split::train);
  const Dataset test = load_cifar10(dir, Split::test);
  CHECK(train.images.shape() == Shape({1000, 3, 32, 32}));
  CHECK(test.images.shape() == Shape({500, 3, 32, 32}));
  CHECK(train.name == "cifar10-train");
  CHECK(test.num_classes == 10);
  for (const Dataset* d : {&train, &test}) {
    int64_t sum = 0;
    for (int64_t c : histogram(*d)) sum += c;
    CHECK(sum == d->size());
  }
  // Record 0 straight from the file: label byte, then the R, G, B planes.
  const Bytes rec = read_file_bytes(dir + "/data_batch_1.bin", 3073);
  CHECK(train.labels[0] == rec[0]);
  const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, std_dev[3] = {0.2470f, 0.2435f, 0.2616f};
  const float* img = train.images.data<float>();
  for (int c = 0; c < 3; ++c)
    for (int k : {0, 1, 33, 1023}) {
      const double want = (rec[1 + c * 1024 + k] / 255.0 - mean[c]) / std_dev[c];
      CHECK(img[c * 1024 + k] == doctest::Approx(want).epsilon(1e-6));
    }
  std::ifstream classes(dir + "/classes.txt");
  std::vector<std::string> names;
  for (std::string s; std::getline(classes, s);) names.push_back(s);
  CHECK(names.size() == 10);
  CHECK(names.front() == "airplane");
}

TEST_CASE("limit keeps the first N examples; head and subset copy rows in order") {
  const Dataset all = load_mnist(kDataDir + "/mnist", Split::test);
  const Dataset some = load_mnist(kDataDir + "/mnist", Split::test, 37);
  check_same(some, all.head(37));
  const Dataset none = load_mnist(kDataDir + "/mnist", Split::test, 0);
  CHECK(none.size() == 0);
  CHECK(none.images.shape() == Shape({0, 1, 28, 28}));

  const Dataset picked = all.subset({5, 0, 5, 1999});
  REQUIRE(picked.size() == 4);
  CHECK(picked.labels ==
        std::vector<int64_t>{all.labels[5], all.labels[0], all.labels[5], all.labels[1999]});
  const int64_t row = 28 * 28;
  CHECK(std::equal(picked.images.data<float>() + 3 * row, picked.images.data<float>() + 4 * row,
                   all.images.data<float>() + 1999 * row));
  CHECK_THROWS_AS(all.subset({2000}), std::out_of_range);
  CHECK_THROWS_AS(all.subset({-1}), std::out_of_range);
  CHECK_THROWS_AS(all.head(2001), std::out_of_range);
  CHECK_THROWS_AS(load_mnist(kDataDir + "/mnist", Split::test, -2), std::invalid_argument);

  check_same(load_cifar10(kDataDir + "/cifar10", Split::train, 10),
             load_cifar10(kDataDir + "/cifar10", Split::train).head(10));

  const std::string e = error_of([] { load_mnist(kDataDir + "/mnist", Split::train, 10001); });
  CHECK(has(e, "limit 10001"));
  CHECK(has(e, "10000"));
  CHECK(has(e, "train-images-idx3-ubyte.gz"));
  const std::string c = error_of([] { load_cifar10(kDataDir + "/cifar10", Split::test, 501); });
  CHECK(has(c, "limit 501"));
  CHECK(has(c, "500"));
  CHECK(has(c, "test_batch.bin"));
}

TEST_CASE("the committed subsets are the first records of the full files") {
  if (!fs::is_directory(kSharedDir)) {
    MESSAGE("skipped: " << kSharedDir << " not present");
    return;
  }
  check_same(load_mnist(kDataDir + "/mnist", Split::train),
             load_mnist(kSharedDir + "/mnist", Split::train, 10000));
  check_same(load_mnist(kDataDir + "/mnist", Split::test),
             load_mnist(kSharedDir + "/mnist", Split::test, 2000));
  check_same(load_cifar10(kDataDir + "/cifar10", Split::train),
             load_cifar10(kSharedDir + "/cifar10", Split::train, 1000));
  const CifarRecords a = read_cifar_bin(kDataDir + "/cifar10/test_batch.bin");
  const CifarRecords b = read_cifar_bin(kSharedDir + "/cifar10/test_batch_first1000.bin", 500);
  CHECK(a.labels == b.labels);
  CHECK(a.pixels == b.pixels);

  // The full test set's class counts, published with the data.
  const Dataset full = load_mnist(kSharedDir + "/mnist", Split::test);
  CHECK(full.size() == 10000);
  CHECK(histogram(full) ==
        std::vector<int64_t>{980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009});
}

TEST_CASE("raw and gzip IDX files read the same; the .gz is preferred when both exist") {
  TempDir dir;
  const Bytes images = idx_images(3, 2, 2, 3);
  write_raw(dir / "t10k-images-idx3-ubyte", images);
  write_raw(dir / "t10k-labels-idx1-ubyte", idx_labels({1, 2, 3}));
  const Dataset raw = load_mnist(dir.path.string(), Split::test);
  CHECK(raw.images.shape() == Shape({3, 1, 2, 2}));
  CHECK(raw.labels == std::vector<int64_t>{1, 2, 3});
  CHECK(raw.images.data<float>()[5] ==
        doctest::Approx((images[16 + 5] / 255.0 - 0.1307) / 0.3081).epsilon(1e-6));

  write_raw(dir / "t10k-images-idx3-ubyte.gz", gzip_bytes(images));
  write_raw(dir / "t10k-labels-idx1-ubyte.gz", gzip_bytes(idx_labels({4, 5, 6})));
  const Dataset gz = load_mnist(dir.path.string(), Split::test);
  CHECK(gz.labels == std::vector<int64_t>{4, 5, 6});
  CHECK(
      std::equal(gz.images.data<float>(), gz.images.data<float>() + 12, raw.images.data<float>()));
}

TEST_CASE("IDX errors name the file and the problem") {
  TempDir dir;
  SUBCASE("truncated raw images") {
    const std::string p = dir / "train-images-idx3-ubyte";
    write_raw(p, idx_images(3, 2, 2, 2));
    const std::string e = error_of([&] { read_idx_images(p); });
    CHECK(has(e, p));
    CHECK(has(e, "truncated"));
    CHECK(has(e, "header says 3 images of 2x2 = 28 bytes"));
    CHECK(has(e, "file has 24"));
    // The size check covers the whole file even when a limit reads less of it.
    CHECK(has(error_of([&] { read_idx_images(p, 1); }), "truncated"));
  }
  SUBCASE("truncated content inside a complete .gz") {
    const std::string p = dir / "train-images-idx3-ubyte.gz";
    write_raw(p, gzip_bytes(idx_images(3, 2, 2, 2)));
    const std::string e = error_of([&] { read_idx_images(p); });
    CHECK(has(e, p));
    CHECK(has(e, "header says 3 images of 2x2"));
    CHECK(has(e, "file has 8"));
  }
  SUBCASE("a .gz file cut short") {
    const std::string p = dir / "train-images-idx3-ubyte.gz";
    Bytes gz = gzip_bytes(idx_images(50, 28, 28, 50));
    gz.resize(gz.size() / 2);
    write_raw(p, gz);
    const std::string e = error_of([&] { read_idx_images(p); });
    CHECK(has(e, p));
    CHECK(has(e, "truncated"));
    CHECK(has(e, "cut short"));
  }
  SUBCASE("truncated labels and header") {
    const std::string p = dir / "train-labels-idx1-ubyte";
    Bytes b = idx_labels({1, 2, 3, 4});
    b.pop_back();
    write_raw(p, b);
    const std::string e = error_of([&] { read_idx_labels(p); });
    CHECK(has(e, p));
    CHECK(has(e, "header says 4 labels"));
    CHECK(has(e, "file has 3"));
    write_raw(p, Bytes{0, 0, 8, 1, 0});
    CHECK(has(error_of([&] { read_idx_labels(p); }), "truncated header"));
  }
  SUBCASE("wrong magic: labels passed as images and the reverse") {
    const std::string labels = dir / "train-labels-idx1-ubyte";
    const std::string images = dir / "train-images-idx3-ubyte";
    write_raw(labels, idx_labels({1, 2}));
    write_raw(images, idx_images(1, 2, 2, 1));
    std::string e = error_of([&] { read_idx_images(labels); });
    CHECK(has(e, labels));
    CHECK(has(e, "magic number is 2049, expected 2051"));
    CHECK(has(e, "labels file"));
    e = error_of([&] { read_idx_labels(images); });
    CHECK(has(e, "magic number is 2051, expected 2049"));
    CHECK(has(e, "images file"));
    write_raw(images, idx_images(1, 2, 2, 1, 0x12345678));
    CHECK(has(error_of([&] { read_idx_images(images); }), "magic number is 305419896"));
  }
  SUBCASE("label out of range") {
    write_raw(dir / "train-images-idx3-ubyte", idx_images(3, 2, 2, 3));
    write_raw(dir / "train-labels-idx1-ubyte", idx_labels({1, 12, 3}));
    const std::string e = error_of([&] { load_mnist(dir.path.string(), Split::train); });
    CHECK(has(e, dir / "train-labels-idx1-ubyte"));
    CHECK(has(e, "index 1 is 12"));
  }
  SUBCASE("image count differs from label count") {
    write_raw(dir / "train-images-idx3-ubyte", idx_images(3, 2, 2, 3));
    write_raw(dir / "train-labels-idx1-ubyte", idx_labels({1, 2}));
    const std::string e = error_of([&] { load_mnist(dir.path.string(), Split::train, 1); });
    CHECK(has(e, dir / "train-images-idx3-ubyte"));
    CHECK(has(e, "3 images"));
    CHECK(has(e, "2 labels"));
  }
  SUBCASE("limit beyond the file") {
    const std::string p = dir / "x-images";
    write_raw(p, idx_images(3, 2, 2, 3));
    const std::string e = error_of([&] { read_idx_images(p, 4); });
    CHECK(has(e, "limit 4 is larger than the 3 images"));
  }
  SUBCASE("missing files list the names looked for") {
    const std::string e = error_of([&] { load_mnist(dir.path.string(), Split::train); });
    CHECK(has(e, dir.path.string()));
    CHECK(has(e, "train-images-idx3-ubyte.gz"));
    CHECK(has(e, "train-images-idx3-ubyte"));
    write_raw(dir / "t10k-images-idx3-ubyte", idx_images(1, 2, 2, 1));
    CHECK(has(error_of([&] { load_mnist(dir.path.string(), Split::test); }),
              "t10k-labels-idx1-ubyte.gz, t10k-labels-idx1-ubyte"));
    CHECK(has(error_of([&] { load_mnist(dir / "nowhere", Split::test); }), "does not exist"));
  }
}

TEST_CASE("CIFAR-10 errors name the file and the problem") {
  TempDir dir;
  SUBCASE("truncated file") {
    const std::string p = dir / "data_batch_1.bin";
    Bytes b = cifar_records({1, 2});
    b.resize(b.size() - 100);
    write_raw(p, b);
    const std::string e = error_of([&] { read_cifar_bin(p); });
    CHECK(has(e, p));
    CHECK(has(e, "not a multiple of the 3073-byte"));
    CHECK(has(e, "1 whole records and 2973 bytes left over"));
    CHECK(has(error_of([&] { load_cifar10(dir.path.string(), Split::train, 1); }), p));
  }
  SUBCASE("bad label") {
    const std::string p = dir / "test_batch.bin";
    write_raw(p, cifar_records({3, 10, 4}));
    const std::string e = error_of([&] { load_cifar10(dir.path.string(), Split::test); });
    CHECK(has(e, p));
    CHECK(has(e, "record 1"));
    CHECK(has(e, "label 10"));
  }
  SUBCASE("missing files, and a gap in the training batches") {
    CHECK(
        has(error_of([&] { load_cifar10(dir.path.string(), Split::train); }), "data_batch_1.bin"));
    CHECK(has(error_of([&] { load_cifar10(dir.path.string(), Split::test); }), "test_batch.bin"));
    write_raw(dir / "data_batch_1.bin", cifar_records({1}));
    write_raw(dir / "data_batch_3.bin", cifar_records({2}));
    const std::string e = error_of([&] { load_cifar10(dir.path.string(), Split::train); });
    CHECK(has(e, "data_batch_2.bin is missing"));
  }
  SUBCASE("several batches are read in order and the limit spans them") {
    write_raw(dir / "data_batch_1.bin", cifar_records({1, 2}));
    write_raw(dir / "data_batch_2.bin", cifar_records({3, 4, 5}));
    CHECK(load_cifar10(dir.path.string(), Split::train).labels ==
          std::vector<int64_t>{1, 2, 3, 4, 5});
    CHECK(load_cifar10(dir.path.string(), Split::train, 3).labels == std::vector<int64_t>{1, 2, 3});
    const std::string e = error_of([&] { load_cifar10(dir.path.string(), Split::train, 6); });
    CHECK(has(e, "limit 6 is larger than the 5 records"));
    CHECK(has(e, "data_batch_2.bin"));
  }
}
