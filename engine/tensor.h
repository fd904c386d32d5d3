// Tensor: a contiguous, row-major array of float32 or float64 with up to 4 dimensions,
// whose memory belongs to a Device. Views (reshape, row slices) share the storage.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace iif {

enum class DType { f32, f64 };
std::size_t dtype_size(DType t);
const char* dtype_name(DType t);

enum class DeviceKind { cpu, cuda };
struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
  static Device cpu() { return {}; }
};

// A shape of at most 4 dimensions; every extent >= 0.
class Shape {
 public:
  static constexpr int kMaxDims = 4;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);
  int ndim() const { return n_; }
  int64_t operator[](int i) const;
  int64_t numel() const;
  std::vector<int64_t> vec() const { return std::vector<int64_t>(d_, d_ + n_); }
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const;  // "(64, 784)"

 private:
  int64_t d_[kMaxDims] = {0, 0, 0, 0};
  int n_ = 0;
};

class Backend;

// Owned device memory. Freed through the backend of its device.
struct Storage {
  void* ptr = nullptr;
  std::size_t bytes = 0;
  Device device;
  Storage(std::size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                     Device device = Device::cpu());
  // Copies host values (converted to dtype) into a new tensor on `device`.
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape,
                            Device device = Device::cpu());

  bool defined() const { return static_cast<bool>(storage_); }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  Device device() const;
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }

  // Raw device pointer to the first element (host pointer on the CPU backend).
  void* raw() const;
  // Typed pointer; throws if T does not match dtype().
  template <class T>
  T* data() const;

  // Views sharing storage.
  Tensor reshape(const Shape& shape) const;
  Tensor rows(int64_t begin, int64_t end) const;  // [begin, end) along dim 0

  // Copies.
  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  void copy_from(const Tensor& src);  // same shape; any device/dtype pair

  // Host-side conveniences (copy through the host when the tensor is elsewhere).
  std::vector<double> to_vector() const;
  double item() const;  // numel() == 1

  // True if both are views of the same storage region.
  bool same_storage(const Tensor& o) const { return storage_ == o.storage_ && offset_ == o.offset_; }
  // True if no other tensor (copy or view) refers to this one's storage: writing into it in
  // place then changes nothing anyone else can see.
  bool sole_owner() const { return storage_ && storage_.use_count() == 1; }

 private:
  std::shared_ptr<Storage> storage_;
  std::size_t offset_ = 0;  // in bytes
  Shape shape_;
  DType dtype_ = DType::f32;
};

// Throws std::invalid_argument naming `what` and both shapes unless a == b.
void check_same_shape(const char* what, const Tensor& a, const Tensor& b);
void check_same_dtype(const char* what, const Tensor& a, const Tensor& b);
void check_ndim(const char* what, const Tensor& t, int ndim);

}  // namespace iif
