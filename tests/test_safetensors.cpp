// Tests for engine/safetensors: roundtrips, files built byte by byte from the format's
// specification (so the layout PyTorch's reader expects is checked without Python), and every
// validation error on a deliberately broken file.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace iif;
namespace st = iif::safetensors;
using Bytes = std::vector<uint8_t>;

using iif_test::error_of;
using iif_test::has;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path =
        fs::temp_directory_path() / ("iif_test_st_" + std::to_string(rd()) + std::to_string(rd()));
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

Bytes read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void put_le64(Bytes& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

template <class T>
void put_values(Bytes& b, const std::vector<T>& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(v.data());
  b.insert(b.end(), p, p + v.size() * sizeof(T));
}

// A file as the spec lays it out: u64 LE header length, the JSON text padded with spaces to a
// multiple of 8 (`pad` = false leaves it unpadded, which readers must accept too), the data.
Bytes make_file(const std::string& header, const Bytes& data, bool pad = true) {
  std::string h = header;
  if (pad) h.append((8 - h.size() % 8) % 8, ' ');
  Bytes b;
  put_le64(b, h.size());
  b.insert(b.end(), h.begin(), h.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

Bytes f32_bytes(const std::vector<float>& v) {
  Bytes b;
  put_values(b, v);
  return b;
}



bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

}  // namespace

TEST_CASE("roundtrip: names, shapes (0-size, scalar, 4-D), dtypes, values and metadata") {
  TempDir dir;
  const std::string path = dir / "model.safetensors";
  std::mt19937 rng(1);
  std::normal_distribution<double> normal;
  auto random = [&](const Shape& s, DType t) {
    std::vector<double> v(static_cast<std::size_t>(s.numel()));
    for (double& x : v) x = normal(rng);
    return Tensor::from_vector(v, s, t);
  };
  const Tensor big = random({5, 3}, DType::f32);
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"fc1.weight", random({3, 7}, DType::f32)},
      {"fc1.bias", random({7}, DType::f64)},
      {"scalar", Tensor::full(Shape(), 2.5, DType::f32)},
      {"empty", Tensor::empty({0, 5}, DType::f32)},
      {"empty64", Tensor::empty({0}, DType::f64)},
      {"conv.weight", random({2, 1, 3, 3}, DType::f32)},
      {"rows_view", big.rows(2, 4)},  // a view starting mid-storage
      {"odd", random({3}, DType::f32)},
      {"wide", random({2, 2}, DType::f64)},
  };
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "seed=1, \"ünï\""}};
  st::save(path, tensors, meta);
  CHECK_FALSE(fs::exists(path + ".tmp"));

  const st::File f = st::load(path);
  CHECK(f.path == path);
  CHECK(f.metadata == meta);
  CHECK(f.tensors.size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    CAPTURE(name);
    REQUIRE(f.has(name));
    CHECK(same_bits(f.get(name), t));
  }
  CHECK(f.get("scalar").ndim() == 0);
  CHECK(f.get("scalar").item() == 2.5);
  CHECK_FALSE(f.has("nope"));

  // Layout facts from the spec: padded header, F64 data first so every tensor is aligned.
  const Bytes raw = read_raw(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  CHECK(n % 8 == 0);
  std::size_t data = 0;
  for (const auto& kv : tensors) data += kv.second.nbytes();
  CHECK(raw.size() == 8 + n + data);
  CHECK(f.tensors[0].second.dtype() == DType::f64);

  // Overwriting an existing file works and replaces it.
  st::save(path, {{"only", Tensor::full({2}, 1.0)}});
  CHECK(st::load(path).tensors.size() == 1);
}

TEST_CASE("byte-level: files built by hand from the spec") {
  TempDir dir;
  const std::string path = dir / "hand.safetensors";
  // One F32 tensor of shape [1,1,2,3] holding 0..5: the 65-character header gets 7 spaces of
  // padding to 72 bytes. These are the bytes the reference writer produces (huggingface/
  // safetensors, tensor.rs, test_serialization_forced_alignement).
  const std::string header = R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})";
  REQUIRE(header.size() == 65);
  const Bytes expected = make_file(header, f32_bytes({0, 1, 2, 3, 4, 5}));
  REQUIRE(expected.size() == 8 + 72 + 24);
  CHECK(expected[0] == 72);
  write_raw(path, expected);
  const st::File f = st::load(path);
  REQUIRE(f.tensors.size() == 1);
  CHECK(f.get("attn0").shape() == Shape({1, 1, 2, 3}));
  CHECK(f.get("attn0").to_vector() == std::vector<double>{0, 1, 2, 3, 4, 5});

  // Our writer produces exactly these bytes.
  std::vector<float> v = {0, 1, 2, 3, 4, 5};
  st::save(dir / "ours.safetensors", {{"attn0", Tensor::from_vector(v, {1, 1, 2, 3})}});
  CHECK(read_raw(dir / "ours.safetensors") == expected);

  // Metadata only: {"__metadata__":{"framework":"pt"}} is 35 bytes, padded to 40 (the
  // reference's test_empty); no tensors at all is "{}" padded to 8.
  st::save(dir / "meta.safetensors", {}, {{"framework", "pt"}});
  CHECK(read_raw(dir / "meta.safetensors") ==
        make_file(R"({"__metadata__":{"framework":"pt"}})", {}));
  st::save(dir / "none.safetensors", {});
  const Bytes none = read_raw(dir / "none.safetensors");
  CHECK(none == Bytes{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '});
  CHECK(st::load(dir / "none.safetensors").tensors.empty());
}

TEST_CASE("byte-level: any key order, unpadded headers, F64, F16 and BF16") {
  TempDir dir;
  const std::string path = dir / "mixed.safetensors";
  // Keys out of data order, and data_offsets before dtype inside an entry.
  Bytes data;
  put_values(data, std::vector<double>{1.5, -2.25});
  put_values(data,
             std::vector<uint16_t>{0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x7C00, 0x7E00, 0x8000});
  put_values(data, std::vector<uint16_t>{0x3F80, 0xBF00, 0x4049});
  const std::string header = R"({"b":{"data_offsets":[32,38],"dtype":"BF16","shape":[3]},)"
                             R"("__metadata__":{"k":"v"},)"
                             R"("h":{"dtype":"F16","shape":[2,4],"data_offsets":[16,32]},)"
                             R"("d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})";
  write_raw(path, make_file(header, data, /*pad=*/false));
  const st::File f = st::load(path);
  CHECK(f.metadata.at("k") == "v");
  REQUIRE(f.tensors.size() == 3);
  CHECK(f.tensors[0].first == "d");  // data order
  CHECK(f.get("d").dtype() == DType::f64);
  CHECK(f.get("d").to_vector() == std::vector<double>{1.5, -2.25});
  // F16: 1, -2, the largest half (65504), the smallest and largest subnormals (2^-24 and
  // 1023 * 2^-24), +inf, a nan, -0.
  const Tensor& h = f.get("h");
  CHECK(h.dtype() == DType::f32);
  CHECK(h.shape() == Shape({2, 4}));
  const float* hv = h.data<float>();
  CHECK(hv[0] == 1.0f);
  CHECK(hv[1] == -2.0f);
  CHECK(hv[2] == 65504.0f);
  CHECK(hv[3] == std::ldexp(1.0f, -24));
  CHECK(hv[4] == 1023 * std::ldexp(1.0f, -24));
  CHECK(std::isinf(hv[5]));
  CHECK(std::isnan(hv[6]));
  CHECK((hv[7] == 0.0f && std::signbit(hv[7])));
  // BF16: 1, -0.5, 3.140625 (0x4049 = 0x40490000 as float32).
  CHECK(f.get("b").to_vector() == std::vector<double>{1.0, -0.5, 3.140625});
}

TEST_CASE("every validation error names the file, the tensor and the problem") {
  TempDir dir;
  const std::string path = dir / "bad.safetensors";
  const Bytes six = f32_bytes({0, 1, 2, 3, 4, 5});
  auto error_for = [&](const Bytes& file) {
    write_raw(path, file);
    return error_of([&] { st::load(path); });
  };
  auto entry = [](const std::string& name, const std::string& body) {
    return "{\"" + name + "\":{" + body + "}}";
  };

  SUBCASE("missing file") {
    const std::string e = error_of([&] { st::load(dir / "nope.safetensors"); });
    CHECK(has(e, dir / "nope.safetensors"));
    CHECK(has(e, "cannot open"));
  }
  SUBCASE("shorter than the length field") {
    const std::string e = error_for(Bytes{1, 2, 3});
    CHECK(has(e, path));
    CHECK(has(e, "8-byte header length"));
  }
  SUBCASE("header length larger than the file") {
    Bytes b = make_file(entry("w", R"("dtype":"F32","shape":[6],"data_offsets":[0,24])"), six);
    b[0] = 0xff;
    b[1] = 0xff;
    const std::string e = error_for(b);
    CHECK(has(e, path));
    CHECK(has(e, "header length 65535 is larger than"));
  }
  SUBCASE("JSON that does not parse, or is not an object") {
    std::string e = error_for(make_file(R"({"w":{"dtype":"F32",)", {}));
    CHECK(has(e, path));
    CHECK(has(e, "not valid JSON"));
    e = error_for(make_file("[1,2]", {}));
    CHECK(has(e, "must be a JSON object"));
    e = error_for(make_file(R"({"w":[0,24]})", six));
    CHECK(has(e, "tensor \"w\""));
    CHECK(has(e, "expected an object"));
  }
  SUBCASE("missing dtype, shape or data_offsets") {
    std::string e = error_for(make_file(entry("w", R"("shape":[6],"data_offsets":[0,24])"), six));
    CHECK(has(e, path));
    CHECK(has(e, "tensor \"w\": missing \"dtype\""));
    e = error_for(make_file(entry("w", R"("dtype":"F32","data_offsets":[0,24])"), six));
    CHECK(has(e, "tensor \"w\": missing \"shape\""));
    e = error_for(make_file(entry("w", R"("dtype":"F32","shape":[6])"), six));
    CHECK(has(e, "tensor \"w\": missing \"data_offsets\""));
  }
  SUBCASE("malformed fields") {
    std::string e = error_for(
        make_file(entry("w", R"("dtype":"F32","shape":[-6],"data_offsets":[0,24])"), six));
    CHECK(has(e, "tensor \"w\": shape must hold non-negative integers, found -6"));
    e = error_for(make_file(entry("w", R"("dtype":"F32","shape":[6],"data_offsets":[0])"), six));
    CHECK(has(e, "data_offsets must be [begin, end]"));
    e = error_for(
        make_file(entry("w", R"("dtype":"F32","shape":[1,1,1,2,3],"data_offsets":[0,24])"), six));
    CHECK(has(e, "5 dimensions"));
    e = error_for(make_file(
        entry("w",
              R"("dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,24])"),
        six));
    CHECK(has(e, "overflows"));
  }
  SUBCASE("unsupported and unknown dtypes name the dtype and the tensor") {
    std::string e = error_for(
        make_file(entry("ids", R"("dtype":"I32","shape":[6],"data_offsets":[0,24])"), six));
    CHECK(has(e, path));
    CHECK(has(e, "tensor \"ids\": dtype I32 is not supported"));
    e = error_for(make_file(entry("w", R"("dtype":"F33","shape":[6],"data_offsets":[0,24])"), six));
    CHECK(has(e, "tensor \"w\": unknown dtype \"F33\""));
  }
  SUBCASE("offsets that do not match shape and dtype") {
    const std::string e =
        error_for(make_file(entry("w", R"("dtype":"F64","shape":[6],"data_offsets":[0,24])"), six));
    CHECK(
        has(e, "tensor \"w\": data_offsets [0, 24] span 24 bytes, but shape [6] of F64 needs 48"));
  }
  SUBCASE("overlapping, gapped, reversed and out-of-bounds offsets") {
    std::string e = error_for(make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                        f32_bytes({0, 1, 2, 3})));
    CHECK(has(e, path));
    CHECK(has(e, "tensor \"b\": data_offsets [8, 16] overlap tensor \"a\""));
    e = error_for(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})",
                            six));
    CHECK(has(e, "tensor \"b\": data_offsets [16, 24] leave a gap"));
    e = error_for(make_file(entry("w", R"("dtype":"F32","shape":[6],"data_offsets":[24,0])"), six));
    CHECK(has(e, "end before they begin"));
    e = error_for(make_file(entry("w", R"("dtype":"F32","shape":[8],"data_offsets":[0,32])"), six));
    CHECK(has(e, "tensor \"w\": data_offsets [0, 32] reach past the 24-byte data section"));
  }
  SUBCASE("data the header does not account for") {
    const std::string e =
        error_for(make_file(entry("w", R"("dtype":"F32","shape":[4],"data_offsets":[0,16])"), six));
    CHECK(has(e, path));
    CHECK(has(e, "tensors cover 16 bytes but the data section has 24"));
  }
  SUBCASE("duplicate names and bad metadata") {
    std::string e =
        error_for(make_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                            R"("w":{"dtype":"F32","shape":[3],"data_offsets":[12,24]}})",
                            six));
    CHECK(has(e, "names \"w\" twice"));
    e = error_for(make_file(R"({"__metadata__":{"epoch":3}})", {}));
    CHECK(has(e, "__metadata__ entry \"epoch\" must be a string"));
  }
  SUBCASE("get() of a missing tensor lists the names present") {
    write_raw(path, make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
                              six));
    const st::File f = st::load(path);
    const std::string e = error_of([&] { f.get("c"); });
    CHECK(has(e, path));
    CHECK(has(e, "no tensor \"c\""));
    CHECK(has(e, "a, b"));
  }
}

TEST_CASE("save rejects bad input and reports I/O failures") {
  TempDir dir;
  const Tensor t = Tensor::full({2}, 1.0);
  CHECK_THROWS_AS(st::save(dir / "x", {{"a", t}, {"a", t}}), std::invalid_argument);
  CHECK_THROWS_AS(st::save(dir / "x", {{"__metadata__", t}}), std::invalid_argument);
  CHECK_THROWS_AS(st::save(dir / "x", {{"", t}}), std::invalid_argument);
  CHECK_THROWS_AS(st::save(dir / "x", {{"u", Tensor()}}), std::invalid_argument);
  CHECK_FALSE(fs::exists(dir / "x"));
  const std::string e = error_of([&] { st::save(dir / "no/such/dir/x.safetensors", {{"a", t}}); });
  CHECK(has(e, "no/such/dir/x.safetensors"));
}
