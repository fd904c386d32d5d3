// safetensors reader and writer. The rules follow the reference implementation
// (huggingface/safetensors, safetensors/src/tensor.rs): header padded with spaces to a multiple
// of 8 bytes, offsets relative to the data section, and tensors packed back to back from
// offset 0 to the end of the file with no gaps or overlaps; anything else is rejected.
#include "engine/safetensors.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

namespace iif {
namespace safetensors {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The data section is copied byte for byte into tensors, which is only right on a
// little-endian host (x86-64, aarch64): the format is little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes little-endian");

// The reference reader refuses larger headers, as a guard against hostile files.
constexpr uint64_t kMaxHeaderBytes = 100000000;
constexpr char kMetadataKey[] = "__metadata__";

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}
[[noreturn]] void fail_tensor(const std::string& path, const std::string& name,
                              const std::string& what) {
  fail(path, "tensor \"" + name + "\": " + what);
}

const char* st_dtype(DType t) { return t == DType::f64 ? "F64" : "F32"; }

// Bytes per element of every dtype the format defines; 0 for names it does not define.
std::size_t st_dtype_size(const std::string& d) {
  static const std::map<std::string, std::size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  const auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

float bf16_to_float(uint16_t h) {
  const uint32_t bits = uint32_t(h) << 16;  // bfloat16 is the top half of a float32
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, nan (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {
    // Subnormal half: normalise the mantissa; every half subnormal is a float32 normal.
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400) == 0);
    bits = sign | uint32_t(112 - e) << 23 | ((mant & 0x3ff) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Entry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

uint64_t header_uint(const std::string& path, const std::string& name, const json& v,
                     const char* field) {
  if (!v.is_number_unsigned())
    fail_tensor(path, name,
                std::string(field) + " must hold non-negative integers, found " + v.dump());
  return v.get<uint64_t>();
}

Entry parse_entry(const std::string& path, const std::string& name, const json& v) {
  if (!v.is_object())
    fail_tensor(path, name,
                "expected an object with dtype, shape and data_offsets, found " + v.dump());
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!v.contains(field)) fail_tensor(path, name, std::string("missing \"") + field + "\"");
  Entry e;
  e.name = name;
  if (!v["dtype"].is_string())
    fail_tensor(path, name, "dtype must be a string, found " + v["dtype"].dump());
  e.dtype = v["dtype"].get<std::string>();
  if (st_dtype_size(e.dtype) == 0) fail_tensor(path, name, "unknown dtype \"" + e.dtype + "\"");
  if (e.dtype != "F32" && e.dtype != "F64" && e.dtype != "F16" && e.dtype != "BF16")
    fail_tensor(path, name,
                "dtype " + e.dtype +
                    " is not supported (F32 and F64 load as they are, F16 and BF16 "
                    "as float32)");
  const json& shape = v["shape"];
  if (!shape.is_array()) fail_tensor(path, name, "shape must be an array, found " + shape.dump());
  if (shape.size() > static_cast<std::size_t>(Shape::kMaxDims))
    fail_tensor(path, name,
                "shape " + shape.dump() + " has " + std::to_string(shape.size()) +
                    " dimensions; at most 4 are supported");
  for (const json& d : shape) {
    const uint64_t x = header_uint(path, name, d, "shape");
    if (x > uint64_t(std::numeric_limits<int64_t>::max()))
      fail_tensor(path, name, "shape extent " + std::to_string(x) + " is too large");
    e.shape.push_back(static_cast<int64_t>(x));
  }
  const json& off = v["data_offsets"];
  if (!off.is_array() || off.size() != 2)
    fail_tensor(path, name, "data_offsets must be [begin, end], found " + off.dump());
  e.begin = header_uint(path, name, off[0], "data_offsets");
  e.end = header_uint(path, name, off[1], "data_offsets");
  if (e.end < e.begin)
    fail_tensor(path, name,
                "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                    "] end before they begin");
  // Size check with overflow guards: a hostile shape must not wrap around to a small size.
  uint64_t bytes = st_dtype_size(e.dtype);
  for (int64_t d : e.shape) {
    if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / uint64_t(d))
      fail_tensor(path, name, "shape " + shape.dump() + " overflows 64-bit byte counts");
    bytes *= uint64_t(d);
  }
  if (e.end - e.begin != bytes)
    fail_tensor(path, name,
                "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                    "] span " + std::to_string(e.end - e.begin) + " bytes, but shape " +
                    shape.dump() + " of " + e.dtype + " needs " + std::to_string(bytes));
  return e;
}

// Reads [begin, end) of the data section into a new CPU tensor, converting 16-bit floats.
Tensor read_tensor(std::ifstream& in, const std::string& path, uint64_t data_start,
                   const Entry& e) {
  const Shape shape(e.shape);
  const bool wide = e.dtype == "F64";
  Tensor t = Tensor::empty(shape, wide ? DType::f64 : DType::f32);
  const std::size_t bytes = static_cast<std::size_t>(e.end - e.begin);
  if (bytes == 0) return t;
  in.seekg(static_cast<std::streamoff>(data_start + e.begin));
  if (e.dtype == "F32" || e.dtype == "F64") {
    in.read(static_cast<char*>(t.raw()), static_cast<std::streamsize>(bytes));
  } else {
    std::vector<uint16_t> half(bytes / 2);
    in.read(reinterpret_cast<char*>(half.data()), static_cast<std::streamsize>(bytes));
    float* out = t.data<float>();
    const bool bf16 = e.dtype == "BF16";
    for (std::size_t i = 0; i < half.size(); ++i)
      out[i] = bf16 ? bf16_to_float(half[i]) : f16_to_float(half[i]);
  }
  if (!in) fail_tensor(path, e.name, "read failed; did the file change while being read?");
  return t;
}

}  // namespace

void save(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
          const std::map<std::string, std::string>& metadata) {
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == kMetadataKey)
      throw std::invalid_argument("safetensors::save(" + path + "): tensor name \"" + name +
                                  "\" is not allowed");
    if (!seen.insert(name).second)
      throw std::invalid_argument("safetensors::save(" + path + "): tensor name \"" + name +
                                  "\" appears twice");
    if (!t.defined())
      throw std::invalid_argument("safetensors::save(" + path + "): tensor \"" + name +
                                  "\" is undefined");
  }
  // Wider dtypes first, as the reference writer does, so that each tensor starts at a
  // multiple of its element size (the header is padded to 8) and can be mapped in place.
  std::vector<std::size_t> order(tensors.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return dtype_size(tensors[a].second.dtype()) > dtype_size(tensors[b].second.dtype());
  });

  // ordered_json keeps keys as inserted: dtype, shape, data_offsets, like the reference.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (std::size_t i : order) {
    const Tensor& t = tensors[i].second;
    const uint64_t bytes = t.nbytes();
    header[tensors[i].first] = {{"dtype", st_dtype(t.dtype())},
                                {"shape", t.shape().vec()},
                                {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(tmp, std::string("cannot open for writing (") + std::strerror(errno) + ")");
    const uint64_t n = text.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (std::size_t i : order) {
      const Tensor host = tensors[i].second.to(Device::cpu());
      if (host.nbytes()) out.write(static_cast<const char*>(host.raw()), host.nbytes());
    }
    out.close();
    if (!out) {
      std::error_code ec;
      fs::remove(tmp, ec);
      fail(tmp, "write failed (disk full?)");
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    fail(path, "cannot rename " + tmp + " to it (" + ec.message() + ")");
  }
}

bool File::has(const std::string& name) const {
  for (const auto& kv : tensors)
    if (kv.first == name) return true;
  return false;
}

const Tensor& File::get(const std::string& name) const {
  for (const auto& kv : tensors)
    if (kv.first == name) return kv.second;
  std::string names;
  for (const auto& kv : tensors) names += (names.empty() ? "" : ", ") + kv.first;
  fail(path, "no tensor \"" + name + "\"; it holds " +
                 (tensors.empty() ? std::string("no tensors") : names));
}

File load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open (") + std::strerror(errno) + ")");
  std::error_code ec;
  const uint64_t file_size = fs::file_size(path, ec);
  if (ec) fail(path, "cannot read its size (" + ec.message() + ")");
  if (file_size < 8)
    fail(path, "file has " + std::to_string(file_size) +
                   " bytes; a safetensors file starts with an 8-byte header length");
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  if (n > file_size - 8)
    fail(path, "header length " + std::to_string(n) + " is larger than the " +
                   std::to_string(file_size - 8) +
                   " bytes after it (truncated or not safetensors)");
  if (n > kMaxHeaderBytes)
    fail(path, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
  std::string text(static_cast<std::size_t>(n), '\0');
  in.read(&text[0], static_cast<std::streamsize>(n));
  if (!in) fail(path, "cannot read the header");

  // nlohmann keeps the last of two equal keys silently; the format forbids duplicates.
  std::string duplicate;
  std::set<std::string> keys;
  const json::parser_callback_t note_keys = [&](int depth, json::parse_event_t event,
                                                json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 &&
        !keys.insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  json header;
  try {
    header = json::parse(text, note_keys);
  } catch (const json::parse_error& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(path, "header must be a JSON object, found " + header.dump());
  if (!duplicate.empty()) fail(path, "header names \"" + duplicate + "\" twice");

  File f;
  f.path = path;
  std::vector<Entry> entries;
  for (const auto& [key, value] : header.items()) {
    if (key == kMetadataKey) {
      if (!value.is_object()) fail(path, "__metadata__ must be an object of strings");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string())
          fail(path, "__metadata__ entry \"" + mk + "\" must be a string, found " + mv.dump());
        f.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, key, value));
  }

  // Packed back to back from 0 to the end of the file, as the reference reader requires.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const uint64_t data_bytes = file_size - 8 - n;
  uint64_t expected = 0;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    const std::string range =
        "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
    if (e.end > data_bytes)
      fail_tensor(path, e.name,
                  range + " reach past the " + std::to_string(data_bytes) +
                      "-byte data section (file truncated?)");
    if (e.begin < expected)
      fail_tensor(path, e.name,
                  range + " overlap tensor \"" + entries[i - 1].name + "\", which ends at " +
                      std::to_string(expected));
    if (e.begin > expected)
      fail_tensor(path, e.name,
                  range + " leave a gap: the previous tensor ends at " + std::to_string(expected) +
                      " and tensors must be packed");
    expected = e.end;
  }
  if (expected != data_bytes)
    fail(path, "tensors cover " + std::to_string(expected) + " bytes but the data section has " +
                   std::to_string(data_bytes) +
                   " (trailing bytes, or a tensor missing from the header)");

  const uint64_t data_start = 8 + n;
  for (const Entry& e : entries)
    f.tensors.emplace_back(e.name, read_tensor(in, path, data_start, e));
  return f;
}

}  // namespace safetensors
}  // namespace iif
