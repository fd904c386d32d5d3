// Tests of engine/npy.h: round trips, the exact bytes of a header written by the spec,
// hand-built files of every supported dtype and of format 2.0/3.0, and every error message.
// Expected files are built here from the format description in numpy/lib/format.py
// (magic, version, little-endian HEADER_LEN, dict padded with spaces to a multiple of 64 and
// ended by '\n', then the data), never from the writer's output.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/npy.h"

namespace fs = std::filesystem;
using iif::DType;
using iif::Shape;
using iif::Tensor;

namespace {

std::string tmp_path(const std::string& name) {
  const fs::path dir = fs::path(IIF_BINARY_DIR) / "test_npy_files";
  fs::create_directories(dir);
  return (dir / name).string();
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// A .npy file per the spec: the header length field is 2 bytes for major 1, else 4.
std::string make_npy(int major, const std::string& dict, const std::string& data) {
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  const std::size_t prefix = 6 + 2 + len_bytes;
  const std::size_t pad = (64 - (prefix + dict.size() + 1) % 64) % 64;
  const std::size_t header_len = dict.size() + pad + 1;
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  for (std::size_t i = 0; i < len_bytes; ++i)
    out += static_cast<char>((header_len >> (8 * i)) & 0xff);
  return out + dict + std::string(pad, ' ') + "\n" + data;
}

template <class T>
std::string as_bytes(const std::vector<T>& v) {  // the host is little-endian, like the files
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string dict(const std::string& descr, const std::string& shape, bool fortran = false) {
  return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
         ", 'shape': " + shape + ", }";
}

// load() must throw std::runtime_error whose message names the file and contains `what`.
void check_load_error(const std::string& path, const std::string& what, bool as_i64 = false) {
  std::string msg;
  try {
    if (as_i64) iif::npy::load_i64(path);
    else iif::npy::load(path);
  } catch (const std::runtime_error& e) {
    msg = e.what();
  }
  INFO("message: " << msg);
  CHECK(msg.find(path) != std::string::npos);
  CHECK(msg.find(what) != std::string::npos);
}

Tensor ramp(const Shape& shape, DType dtype) {
  std::vector<double> v(static_cast<std::size_t>(shape.numel()));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.1 * static_cast<double>(i) - 3.0 + 1e-9;
  return Tensor::from_vector(v, shape, dtype);
}

}  // namespace

TEST_CASE("save/load round trip f32 and f64 bit for bit; shapes (), (0,), (1,), (3,5), (2,3,4,5)") {
  const std::vector<Shape> shapes = {Shape{}, Shape{0}, Shape{1}, Shape{3, 5}, Shape{2, 3, 4, 5}};
  for (DType dt : {DType::f32, DType::f64}) {
    for (const Shape& s : shapes) {
      INFO(iif::dtype_name(dt) << " " << s.str());
      const std::string path = tmp_path("roundtrip.npy");
      const Tensor t = ramp(s, dt);
      iif::npy::save(path, t);
      CHECK_FALSE(fs::exists(path + ".tmp"));
      const std::string bytes = read_bytes(path);
      REQUIRE(bytes.size() >= 10);
      const std::size_t header_end = 10 + (static_cast<unsigned char>(bytes[8]) |
                                           (static_cast<unsigned char>(bytes[9]) << 8));
      CHECK(header_end % 64 == 0);
      CHECK(bytes[header_end - 1] == '\n');
      CHECK(bytes.size() == header_end + t.nbytes());

      const Tensor u = iif::npy::load(path);
      CHECK(u.dtype() == dt);
      CHECK(u.shape() == s);
      CHECK(u.device() == iif::Device::cpu());
      REQUIRE(u.nbytes() == t.nbytes());
      if (t.nbytes() > 0) CHECK(std::memcmp(u.raw(), t.raw(), t.nbytes()) == 0);
    }
  }
}

TEST_CASE("the bytes of a saved (2, 3) float32 array are exactly those the spec prescribes") {
  const std::string path = tmp_path("exact.npy");
  iif::npy::save(path, Tensor::from_vector(std::vector<float>{0, 1, 2, 3, 4, -2.5f}, Shape{2, 3}));
  // The dict is 59 bytes; 10 (magic, version, uint16 length) + 59 + 58 spaces + '\n' = 128,
  // so HEADER_LEN = 118 = 0x76.
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  REQUIRE(dict.size() == 59);
  const std::string expected_header =
      std::string("\x93NUMPY\x01\x00\x76\x00", 10) + dict + std::string(58, ' ') + "\n";
  REQUIRE(expected_header.size() == 128);
  // IEEE-754 little-endian: 0, 1 = 3f800000, 2 = 40000000, 3 = 40400000, 4 = 40800000,
  // -2.5 = c0200000.
  const std::string expected_data(
      "\x00\x00\x00\x00" "\x00\x00\x80\x3f" "\x00\x00\x00\x40"
      "\x00\x00\x40\x40" "\x00\x00\x80\x40" "\x00\x00\x20\xc0", 24);
  CHECK(read_bytes(path) == expected_header + expected_data);
}

TEST_CASE("hand-built format 2.0 and 3.0 files, with keys in any order and either quote") {
  const std::vector<double> v = {1.5, -2.25, 1e300};
  for (int major : {2, 3}) {
    INFO("version " << major);
    const std::string path = tmp_path("v2.npy");
    const std::string d = "{\"shape\": (3,), \"fortran_order\": False, \"descr\": \"<f8\"}";
    write_bytes(path, make_npy(major, d, as_bytes(v)));
    const Tensor t = iif::npy::load(path);
    CHECK(t.dtype() == DType::f64);
    CHECK(t.shape() == Shape{3});
    CHECK(t.to_vector() == v);
  }
}

TEST_CASE("integer and bool dtypes load as float64 in load() and as int64 in load_i64()") {
  struct Case {
    std::string descr, data;
    std::vector<int64_t> values;
  };
  const std::vector<Case> cases = {
      {"|i1", as_bytes(std::vector<int8_t>{-128, 0, 127}), {-128, 0, 127}},
      {"<i2", as_bytes(std::vector<int16_t>{-32768, 1, 32767}), {-32768, 1, 32767}},
      {"<i4", as_bytes(std::vector<int32_t>{-7, 0, 2147483647}), {-7, 0, 2147483647}},
      {"<i8", as_bytes(std::vector<int64_t>{-(1ll << 40), 3, 1ll << 50}),
       {-(1ll << 40), 3, 1ll << 50}},
      {"|u1", as_bytes(std::vector<uint8_t>{0, 200, 255}), {0, 200, 255}},
      {"<u2", as_bytes(std::vector<uint16_t>{0, 65535, 9}), {0, 65535, 9}},
      {"<u4", as_bytes(std::vector<uint32_t>{4294967295u, 0, 1}), {4294967295ll, 0, 1}},
      {"<u8", as_bytes(std::vector<uint64_t>{1ull << 52, 0, 5}), {1ll << 52, 0, 5}},
      {"|b1", std::string("\x01\x00\x01", 3), {1, 0, 1}},
  };
  for (const Case& c : cases) {
    INFO(c.descr);
    const std::string path = tmp_path("int.npy");
    write_bytes(path, make_npy(1, dict(c.descr, "(3,)"), c.data));
    const Tensor t = iif::npy::load(path);
    CHECK(t.dtype() == DType::f64);
    CHECK(t.shape() == Shape{3});
    const std::vector<double> got = t.to_vector();
    for (int i = 0; i < 3; ++i) CHECK(got[i] == static_cast<double>(c.values[i]));
    std::vector<int64_t> shape;
    CHECK(iif::npy::load_i64(path, &shape) == c.values);
    CHECK(shape == std::vector<int64_t>{3});
  }
}

TEST_CASE("save_i64 / load_i64 round trip keeps values and shape") {
  const std::string path = tmp_path("i64.npy");
  const std::vector<int64_t> v = {5, -1, 1ll << 62, 0, 7, 9};
  iif::npy::save_i64(path, v, {2, 3});
  std::vector<int64_t> shape;
  CHECK(iif::npy::load_i64(path, &shape) == v);
  CHECK(shape == std::vector<int64_t>{2, 3});
  iif::npy::save_i64(path, {}, {0});
  CHECK(iif::npy::load_i64(path, &shape).empty());
  CHECK(shape == std::vector<int64_t>{0});
  CHECK_THROWS_AS(iif::npy::save_i64(path, v, {4}), std::runtime_error);
}

TEST_CASE("fortran_order True is accepted only where it stores the same bytes as C order") {
  const std::string path = tmp_path("fortran1d.npy");
  write_bytes(path, make_npy(1, dict("<f4", "(2,)", true), as_bytes(std::vector<float>{1, 2})));
  CHECK(iif::npy::load(path).to_vector() == std::vector<double>{1, 2});
}

TEST_CASE("every malformed file raises an error naming the file and what was expected") {
  const std::string f8x3 = as_bytes(std::vector<double>{1, 2, 3});

  SUBCASE("missing file") { check_load_error(tmp_path("does_not_exist.npy"), "cannot open"); }
  SUBCASE("bad magic") {
    const std::string p = tmp_path("bad_magic.npy");
    write_bytes(p, "PK\x03\x04 this is a zip file, not an npy");
    check_load_error(p, "bad magic");
  }
  SUBCASE("empty file") {
    const std::string p = tmp_path("empty.npy");
    write_bytes(p, "");
    check_load_error(p, "bad magic");
  }
  SUBCASE("unsupported version") {
    const std::string p = tmp_path("v4.npy");
    write_bytes(p, make_npy(4, dict("<f8", "(3,)"), f8x3));
    check_load_error(p, "unsupported format version 4.0");
  }
  SUBCASE("malformed header dict: missing comma") {
    const std::string p = tmp_path("malformed.npy");
    write_bytes(p, make_npy(1, "{'descr': '<f8' 'fortran_order': False, 'shape': (3,), }", f8x3));
    check_load_error(p, "malformed header dict");
  }
  SUBCASE("malformed header dict: missing field") {
    const std::string p = tmp_path("missing_shape.npy");
    write_bytes(p, make_npy(1, "{'descr': '<f8', 'fortran_order': False, }", f8x3));
    check_load_error(p, "missing field 'shape'");
  }
  SUBCASE("malformed header dict: not a dict") {
    const std::string p = tmp_path("not_dict.npy");
    write_bytes(p, make_npy(1, "[1, 2, 3]", f8x3));
    check_load_error(p, "malformed header dict");
  }
  SUBCASE("header longer than the file") {
    const std::string p = tmp_path("short_header.npy");
    write_bytes(p, make_npy(1, dict("<f8", "(3,)"), "").substr(0, 40));
    check_load_error(p, "truncated");
  }
  SUBCASE("big-endian dtype") {
    const std::string p = tmp_path("big_endian.npy");
    write_bytes(p, make_npy(1, dict(">f8", "(3,)"), f8x3));
    check_load_error(p, "big-endian dtype '>f8'");
  }
  SUBCASE("unsupported dtype") {
    const std::string p = tmp_path("complex.npy");
    write_bytes(p, make_npy(1, dict("<c8", "(3,)"), f8x3));
    check_load_error(p, "unsupported dtype '<c8'");
  }
  SUBCASE("structured dtype") {
    const std::string p = tmp_path("structured.npy");
    const std::string d = "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (3,), }";
    write_bytes(p, make_npy(1, d, f8x3));
    check_load_error(p, "structured dtypes are not supported");
  }
  SUBCASE("fortran_order True") {
    const std::string p = tmp_path("fortran.npy");
    write_bytes(p, make_npy(1, dict("<f8", "(3, 1, 2)", true), f8x3 + f8x3));
    check_load_error(p, "Fortran-order");
    check_load_error(p, "np.ascontiguousarray");
  }
  SUBCASE("more than 4 dims") {
    const std::string p = tmp_path("five_dims.npy");
    write_bytes(p, make_npy(1, dict("<f8", "(1, 1, 1, 1, 3)"), f8x3));
    check_load_error(p, "at most 4");
  }
  SUBCASE("truncated data") {
    const std::string p = tmp_path("truncated.npy");
    write_bytes(p, make_npy(1, dict("<f8", "(3,)"), f8x3.substr(0, 16)));
    check_load_error(p, "truncated: expected 24 bytes of data, found 16");
  }
  SUBCASE("load_i64 of a float array") {
    const std::string p = tmp_path("float_for_i64.npy");
    write_bytes(p, make_npy(1, dict("<f8", "(3,)"), f8x3));
    check_load_error(p, "load_i64 expects an integer", true);
  }
  SUBCASE("load_i64 of a uint64 above int64") {
    const std::string p = tmp_path("u8_big.npy");
    write_bytes(p, make_npy(1, dict("<u8", "(1,)"), as_bytes(std::vector<uint64_t>{~0ull})));
    check_load_error(p, "does not fit int64", true);
  }
}
