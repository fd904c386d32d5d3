// NumPy .npy reader and writer (see engine/npy.h). The layout, from numpy/lib/format.py:
//   "\x93NUMPY" | major | minor | HEADER_LEN (uint16 LE in 1.0, uint32 LE in 2.0 and 3.0)
//   | header: a Python dict literal {'descr', 'fortran_order', 'shape'}, padded with spaces
//     and ended by '\n' so that magic + version + length + header is a multiple of 64 bytes
//   | data: numel * itemsize bytes (numel of shape () is 1).
#include "engine/npy.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <stdexcept>

namespace iif {
namespace npy {

namespace {

constexpr char kMagic[] = "\x93NUMPY";  // 6 bytes; \x93 is byte 147
constexpr std::size_t kMagicLen = 6;
constexpr std::size_t kAlign = 64;

[[noreturn]] void fail(const std::string& path, const std::string& msg) {
  throw std::runtime_error("npy: " + path + ": " + msg);
}

// Data are written and read as raw bytes, which is only right on a little-endian host.
void check_host(const std::string& path) {
  const uint16_t one = 1;
  unsigned char first;
  std::memcpy(&first, &one, 1);
  if (first != 1) fail(path, "this build reads and writes .npy data only on little-endian hosts");
}

std::string shape_repr(const std::vector<int64_t>& shape) {  // Python's tuple repr
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) s += ",";
  return s + ")";
}

// ---- writing ------------------------------------------------------------------------------

std::string header_v1(const std::string& path, const std::string& descr,
                      const std::vector<int64_t>& shape) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " +
                     shape_repr(shape) + ", }";
  const std::size_t prefix = kMagicLen + 2 + 2;  // magic, version, uint16 length
  const std::size_t pad = (kAlign - (prefix + dict.size() + 1) % kAlign) % kAlign;
  const std::string header = dict + std::string(pad, ' ') + "\n";
  if (header.size() > 65535) fail(path, "header of " + std::to_string(header.size()) +
                                            " bytes does not fit format 1.0 (65535 at most)");
  std::string out(kMagic, kMagicLen);
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  return out + header;
}

void write_file(const std::string& path, const std::string& header, const void* data,
                std::size_t nbytes) {
  check_host(path);
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(path, "cannot open " + tmp + " for writing: " + std::strerror(errno));
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size();
  if (ok && nbytes > 0) ok = std::fwrite(data, 1, nbytes, f) == nbytes;
  ok = (std::fflush(f) == 0) && ok;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    const std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    fail(path, "writing " + tmp + " failed: " + err);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    fail(path, "cannot rename " + tmp + " to the destination: " + err);
  }
}

// ---- reading ------------------------------------------------------------------------------

struct Header {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

// A parser for exactly the dict literals numpy writes: string keys; values are a string,
// True/False, or a tuple of non-negative ints (a Python 2 'L' suffix is accepted).
class DictParser {
 public:
  DictParser(const std::string& path, const std::string& text) : path_(path), s_(text) {}

  Header parse() {
    Header h;
    bool seen_descr = false, seen_fortran = false, seen_shape = false;
    expect('{');
    while (!eat('}')) {
      const std::string key = string_literal();
      expect(':');
      if (key == "descr" && !seen_descr) {
        skip_ws();
        if (peek() == '[' || peek() == '{')
          fail(path_, "field 'descr': structured dtypes are not supported: expected a plain "
                      "dtype string such as '<f4'");
        h.descr = string_literal();
        seen_descr = true;
      } else if (key == "fortran_order" && !seen_fortran) {
        h.fortran_order = boolean();
        seen_fortran = true;
      } else if (key == "shape" && !seen_shape) {
        h.shape = int_tuple();
        seen_shape = true;
      } else {
        malformed("unexpected or repeated key '" + key + "'");
      }
      if (!eat(',')) {
        expect('}');
        break;
      }
    }
    skip_ws();  // the spaces and '\n' of the padding
    if (pos_ != s_.size()) malformed("text after the closing '}'");
    if (!seen_descr) malformed("missing field 'descr'");
    if (!seen_fortran) malformed("missing field 'fortran_order'");
    if (!seen_shape) malformed("missing field 'shape'");
    return h;
  }

 private:
  [[noreturn]] void malformed(const std::string& what) const {
    std::string shown = s_.substr(0, 200);
    while (!shown.empty() && std::isspace(static_cast<unsigned char>(shown.back())))
      shown.pop_back();
    fail(path_, "malformed header dict: " + what + " at offset " + std::to_string(pos_) +
                    "; expected {'descr': ..., 'fortran_order': ..., 'shape': (...)}, found " +
                    shown);
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool eat(char c) {
    skip_ws();
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void expect(char c) {
    if (!eat(c)) malformed(std::string("expected '") + c + "'");
  }
  std::string string_literal() {
    skip_ws();
    const char q = peek();
    if (q != '\'' && q != '"') malformed("expected a quoted string");
    const std::size_t end = s_.find(q, pos_ + 1);
    if (end == std::string::npos) malformed("unterminated string");
    std::string v = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return v;
  }
  bool boolean() {
    skip_ws();
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    malformed("field 'fortran_order': expected True or False");
  }
  std::vector<int64_t> int_tuple() {
    std::vector<int64_t> v;
    expect('(');
    while (!eat(')')) {
      skip_ws();
      if (!std::isdigit(static_cast<unsigned char>(peek())))
        malformed("field 'shape': expected a non-negative integer");
      int64_t x = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        if (x > (std::numeric_limits<int64_t>::max() - 9) / 10)
          malformed("field 'shape': extent too large");
        x = 10 * x + (s_[pos_++] - '0');
      }
      if (peek() == 'L') ++pos_;
      v.push_back(x);
      if (!eat(',')) {
        expect(')');
        break;
      }
    }
    return v;
  }

  const std::string& path_;
  const std::string& s_;
  std::size_t pos_ = 0;
};

enum class Kind { f, i, u, b };
struct DTypeInfo {
  Kind kind;
  int size;
};

DTypeInfo parse_descr(const std::string& path, const std::string& d) {
  struct Known {
    const char* body;
    DTypeInfo info;
  };
  static const Known kKnown[] = {
      {"f4", {Kind::f, 4}}, {"f8", {Kind::f, 8}}, {"i1", {Kind::i, 1}}, {"i2", {Kind::i, 2}},
      {"i4", {Kind::i, 4}}, {"i8", {Kind::i, 8}}, {"u1", {Kind::u, 1}}, {"u2", {Kind::u, 2}},
      {"u4", {Kind::u, 4}}, {"u8", {Kind::u, 8}}, {"b1", {Kind::b, 1}}};
  const char* kSupported =
      "expected one of '<f4', '<f8', '|i1', '<i2', '<i4', '<i8', '|u1', '<u2', '<u4', '<u8', '|b1'";
  const Known* found = nullptr;
  if (d.size() == 3 && std::string("<>|=").find(d[0]) != std::string::npos)
    for (const Known& k : kKnown)
      if (d.compare(1, 2, k.body) == 0) found = &k;
  if (!found) fail(path, "field 'descr': unsupported dtype '" + d + "': " + kSupported);
  // Byte order matters only for multi-byte items; '=' is native, i.e. little-endian here.
  if (found->info.size > 1 && d[0] == '>')
    fail(path, "field 'descr': big-endian dtype '" + d + "' is not supported: " + kSupported +
                   " (in numpy: a.astype(a.dtype.newbyteorder('<')))");
  if (found->info.size > 1 && d[0] == '|')
    fail(path, "field 'descr': dtype '" + d + "' has no byte order: " + kSupported);
  return found->info;
}

struct Raw {
  Header header;
  DTypeInfo dtype;
  int64_t numel = 1;
  std::ifstream file;  // positioned at the first data byte
};

void open_npy(const std::string& path, Raw& r) {
  check_host(path);
  r.file.open(path, std::ios::binary);
  if (!r.file) fail(path, std::string("cannot open for reading: ") + std::strerror(errno));
  r.file.seekg(0, std::ios::end);
  const int64_t file_size = static_cast<int64_t>(r.file.tellg());
  r.file.seekg(0);

  unsigned char pre[12] = {0};
  r.file.read(reinterpret_cast<char*>(pre), 8);
  if (r.file.gcount() < static_cast<std::streamsize>(kMagicLen) ||
      std::memcmp(pre, kMagic, kMagicLen) != 0)
    fail(path, "bad magic: expected the 6 bytes \\x93NUMPY at the start; not a .npy file");
  if (r.file.gcount() < 8) fail(path, "truncated: the file ends inside the version field");
  const int major = pre[6], minor = pre[7];
  if (!((major == 1 || major == 2 || major == 3) && minor == 0))
    fail(path, "field 'version': unsupported format version " + std::to_string(major) + "." +
                   std::to_string(minor) + ": expected 1.0, 2.0 or 3.0");
  const int len_bytes = major == 1 ? 2 : 4;
  r.file.read(reinterpret_cast<char*>(pre + 8), len_bytes);
  if (r.file.gcount() < len_bytes) fail(path, "truncated: the file ends inside HEADER_LEN");
  uint64_t header_len = 0;
  for (int i = len_bytes - 1; i >= 0; --i) header_len = (header_len << 8) | pre[8 + i];
  const int64_t data_offset = 8 + len_bytes + static_cast<int64_t>(header_len);
  if (data_offset > file_size)
    fail(path, "truncated: HEADER_LEN promises a header of " + std::to_string(header_len) +
                   " bytes, the file has " + std::to_string(file_size - 8 - len_bytes));
  std::string text(header_len, '\0');
  r.file.read(&text[0], static_cast<std::streamsize>(header_len));

  r.header = DictParser(path, text).parse();
  r.dtype = parse_descr(path, r.header.descr);
  r.numel = 1;
  for (int64_t e : r.header.shape) {
    if (e != 0 && r.numel > std::numeric_limits<int64_t>::max() / 8 / e)
      fail(path, "field 'shape': " + shape_repr(r.header.shape) + " has too many elements");
    r.numel *= e;
  }
  // C and Fortran order store the same bytes when at most one extent exceeds 1.
  int long_dims = 0;
  for (int64_t e : r.header.shape) long_dims += e > 1;
  if (r.header.fortran_order && long_dims > 1)
    fail(path, "field 'fortran_order': Fortran-order (column-major) arrays are unsupported; "
               "save a C-order copy in numpy: np.save(path, np.ascontiguousarray(a))");
  const int64_t expected = r.numel * r.dtype.size;
  const int64_t found = file_size - data_offset;
  if (found < expected)
    fail(path, "truncated: expected " + std::to_string(expected) + " bytes of data, found " +
                   std::to_string(found));
}

template <class T>
T read_le(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// The integer or bool item at p as int64 (a u8 value above 2^63 - 1 throws).
int64_t int_item(const std::string& path, const DTypeInfo& t, const char* p) {
  if (t.kind == Kind::b) return p[0] != 0;
  if (t.kind == Kind::i) {
    switch (t.size) {
      case 1: return read_le<int8_t>(p);
      case 2: return read_le<int16_t>(p);
      case 4: return read_le<int32_t>(p);
      default: return read_le<int64_t>(p);
    }
  }
  switch (t.size) {
    case 1: return read_le<uint8_t>(p);
    case 2: return read_le<uint16_t>(p);
    case 4: return read_le<uint32_t>(p);
    default: {
      const uint64_t u = read_le<uint64_t>(p);
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        fail(path, "value " + std::to_string(u) + " of dtype '<u8' does not fit int64");
      return static_cast<int64_t>(u);
    }
  }
}

void read_data(const std::string& path, Raw& r, void* dst) {
  const std::streamsize n = static_cast<std::streamsize>(r.numel * r.dtype.size);
  if (n > 0) r.file.read(static_cast<char*>(dst), n);
  if (r.file.gcount() != n && n > 0) fail(path, "read error in the data section");
}

}  // namespace

void save(const std::string& path, const Tensor& t) {
  if (!t.defined()) fail(path, "cannot save an undefined tensor");
  const Tensor host = t.device() == Device::cpu() ? t : t.to(Device::cpu());
  const char* descr = host.dtype() == DType::f32 ? "<f4" : "<f8";
  write_file(path, header_v1(path, descr, host.shape().vec()), host.raw(), host.nbytes());
}

void save_i64(const std::string& path, const std::vector<int64_t>& v,
              const std::vector<int64_t>& shape) {
  int64_t numel = 1;
  for (int64_t e : shape) {
    if (e < 0) fail(path, "shape " + shape_repr(shape) + " has a negative extent");
    numel *= e;
  }
  if (numel != static_cast<int64_t>(v.size()))
    fail(path, "shape " + shape_repr(shape) + " holds " + std::to_string(numel) + " values, got " +
                   std::to_string(v.size()));
  write_file(path, header_v1(path, "<i8", shape), v.data(), v.size() * sizeof(int64_t));
}

Tensor load(const std::string& path) {
  Raw r;
  open_npy(path, r);
  if (r.header.shape.size() > static_cast<std::size_t>(Shape::kMaxDims))
    fail(path, "field 'shape': " + shape_repr(r.header.shape) + " has " +
                   std::to_string(r.header.shape.size()) + " dims; a Tensor holds at most 4");
  const Shape shape(r.header.shape);
  if (r.dtype.kind == Kind::f) {
    Tensor t = Tensor::empty(shape, r.dtype.size == 4 ? DType::f32 : DType::f64);
    read_data(path, r, t.raw());
    return t;
  }
  std::string raw(static_cast<std::size_t>(r.numel * r.dtype.size), '\0');
  read_data(path, r, &raw[0]);
  Tensor t = Tensor::empty(shape, DType::f64);
  double* out = t.data<double>();
  for (int64_t i = 0; i < r.numel; ++i)
    out[i] = static_cast<double>(int_item(path, r.dtype, raw.data() + i * r.dtype.size));
  return t;
}

std::vector<int64_t> load_i64(const std::string& path, std::vector<int64_t>* shape) {
  Raw r;
  open_npy(path, r);
  if (r.dtype.kind == Kind::f)
    fail(path, "field 'descr': dtype '" + r.header.descr +
                   "' is floating point; load_i64 expects an integer or bool dtype");
  std::string raw(static_cast<std::size_t>(r.numel * r.dtype.size), '\0');
  read_data(path, r, &raw[0]);
  std::vector<int64_t> v(static_cast<std::size_t>(r.numel));
  for (int64_t i = 0; i < r.numel; ++i)
    v[i] = int_item(path, r.dtype, raw.data() + i * r.dtype.size);
  if (shape) *shape = r.header.shape;
  return v;
}

}  // namespace npy
}  // namespace iif
