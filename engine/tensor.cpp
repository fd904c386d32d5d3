// Tensor, Shape and Storage: construction, views, copies across devices and dtypes.
#include "engine/tensor.h"

#include <cstring>
#include <sstream>
#include <stdexcept>

#include "engine/backend.h"

namespace iif {

std::size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 8; }
const char* dtype_name(DType t) { return t == DType::f32 ? "float32" : "float64"; }

std::string Device::str() const {
  return kind == DeviceKind::cpu ? std::string("cpu") : "cuda:" + std::to_string(index);
}

// ---- Shape --------------------------------------------------------------------------------
Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::vector<int64_t>(dims)) {}

Shape::Shape(const std::vector<int64_t>& dims) {
  if (dims.size() > static_cast<std::size_t>(kMaxDims))
    throw std::invalid_argument("Shape: at most 4 dimensions are supported, got " +
                                std::to_string(dims.size()));
  n_ = static_cast<int>(dims.size());
  for (int i = 0; i < n_; ++i) {
    if (dims[i] < 0)
      throw std::invalid_argument("Shape: negative extent " + std::to_string(dims[i]) +
                                  " in dimension " + std::to_string(i));
    d_[i] = dims[i];
  }
}

int64_t Shape::operator[](int i) const {
  if (i < 0) i += n_;
  if (i < 0 || i >= n_)
    throw std::out_of_range("Shape" + str() + ": no dimension " + std::to_string(i));
  return d_[i];
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < n_; ++i) n *= d_[i];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (n_ != o.n_) return false;
  for (int i = 0; i < n_; ++i)
    if (d_[i] != o.d_[i]) return false;
  return true;
}

std::string Shape::str() const {
  std::ostringstream s;
  s << "(";
  for (int i = 0; i < n_; ++i) s << (i ? ", " : "") << d_[i];
  if (n_ == 1) s << ",";
  s << ")";
  return s.str();
}

// ---- Storage ------------------------------------------------------------------------------
Storage::Storage(std::size_t b, Device d) : bytes(b), device(d) {
  ptr = backend_for(device).allocate(bytes);
}
Storage::~Storage() {
  if (ptr) backend_for(device).deallocate(ptr, bytes);
}

// ---- Tensor -------------------------------------------------------------------------------
Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(static_cast<std::size_t>(shape.numel()) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  backend_for(device).fill(t, value);
  return t;
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype,
                           Device device) {
  if (static_cast<int64_t>(values.size()) != shape.numel())
    throw std::invalid_argument("Tensor::from_vector: " + std::to_string(values.size()) +
                                " values do not fill shape " + shape.str());
  Tensor host = empty(shape, DType::f64, Device::cpu());
  if (!values.empty()) std::memcpy(host.raw(), values.data(), values.size() * sizeof(double));
  if (dtype == DType::f64 && device == Device::cpu()) return host;
  Tensor t = empty(shape, dtype, device);
  t.copy_from(host);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape, Device device) {
  if (static_cast<int64_t>(values.size()) != shape.numel())
    throw std::invalid_argument("Tensor::from_vector: " + std::to_string(values.size()) +
                                " values do not fill shape " + shape.str());
  Tensor host = empty(shape, DType::f32, Device::cpu());
  if (!values.empty()) std::memcpy(host.raw(), values.data(), values.size() * sizeof(float));
  return device == Device::cpu() ? host : host.to(device);
}

Device Tensor::device() const { return storage_ ? storage_->device : Device::cpu(); }

void* Tensor::raw() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->ptr) + offset_;
}

template <>
float* Tensor::data<float>() const {
  if (dtype_ != DType::f32)
    throw std::invalid_argument(std::string("Tensor::data<float>: tensor is ") + dtype_name(dtype_));
  return static_cast<float*>(raw());
}
template <>
double* Tensor::data<double>() const {
  if (dtype_ != DType::f64)
    throw std::invalid_argument(std::string("Tensor::data<double>: tensor is ") + dtype_name(dtype_));
  return static_cast<double*>(raw());
}

Tensor Tensor::reshape(const Shape& shape) const {
  if (shape.numel() != numel())
    throw std::invalid_argument("Tensor::reshape: cannot view " + shape_.str() + " as " +
                                shape.str() + " (element counts differ)");
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  if (ndim() < 1 || begin < 0 || end < begin || end > dim(0))
    throw std::invalid_argument("Tensor::rows: range [" + std::to_string(begin) + ", " +
                                std::to_string(end) + ") is outside dimension 0 of " + shape_.str());
  std::vector<int64_t> d = shape_.vec();
  const int64_t row = d[0] ? numel() / d[0] : 0;
  d[0] = end - begin;
  Tensor t = *this;
  t.shape_ = Shape(d);
  t.offset_ = offset_ + static_cast<std::size_t>(begin * row) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor t = empty(shape_, dtype_, d);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype_) return *this;
  Tensor t = empty(shape_, dt, device());
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  // An undefined tensor reports numel() == 1 (shape ()), so check before touching memory.
  if (!defined() || !src.defined())
    throw std::invalid_argument(std::string("Tensor::copy_from: the ") +
                                (defined() ? "source" : "destination") + " tensor is undefined");
  if (src.numel() != numel())
    throw std::invalid_argument("Tensor::copy_from: source " + src.shape().str() +
                                " and destination " + shape_.str() + " differ in size");
  if (numel() == 0) return;
  if (src.dtype() != dtype_) {
    // Convert on the source's device, then move.
    Tensor conv = empty(src.shape(), dtype_, src.device());
    backend_for(src.device()).cast(src, conv);
    copy_from(conv);
    return;
  }
  const Device sd = src.device(), dd = device();
  if (sd == dd) {
    backend_for(dd).copy_on_device(raw(), src.raw(), nbytes());
  } else if (sd.kind == DeviceKind::cpu) {
    backend_for(dd).copy_from_host(raw(), src.raw(), nbytes());
  } else if (dd.kind == DeviceKind::cpu) {
    backend_for(sd).copy_to_host(raw(), src.raw(), nbytes());
  } else {
    Tensor host = src.to(Device::cpu());
    copy_from(host);
  }
}

std::vector<double> Tensor::to_vector() const {
  if (!defined()) throw std::invalid_argument("Tensor::to_vector: undefined tensor");
  std::vector<double> out(static_cast<std::size_t>(numel()));
  if (out.empty()) return out;
  Tensor host = to(Device::cpu()).to(DType::f64);
  std::memcpy(out.data(), host.raw(), out.size() * sizeof(double));
  return out;
}

double Tensor::item() const {
  if (numel() != 1)
    throw std::invalid_argument("Tensor::item: tensor of shape " + shape_.str() +
                                " does not hold exactly one value");
  return to_vector()[0];
}

void check_same_shape(const char* what, const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape())
    throw std::invalid_argument(std::string(what) + ": shapes " + a.shape().str() + " and " +
                                b.shape().str() + " must be equal");
}

void check_same_dtype(const char* what, const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype())
    throw std::invalid_argument(std::string(what) + ": dtypes " + dtype_name(a.dtype()) + " and " +
                                dtype_name(b.dtype()) + " must be equal");
}

void check_ndim(const char* what, const Tensor& t, int ndim) {
  if (t.ndim() != ndim)
    throw std::invalid_argument(std::string(what) + ": expected a " + std::to_string(ndim) +
                                "-D tensor, got shape " + t.shape().str());
}

}  // namespace iif
