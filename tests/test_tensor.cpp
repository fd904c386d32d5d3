// Tests for Shape and Tensor (engine/tensor.h): construction, views that share storage, copies
// across dtypes, host conversions, and the error messages of every check.
#include <doctest/doctest.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/tensor.h"

using iif::DType;
using iif::Shape;
using iif::Tensor;

namespace {

// Runs f, which must throw E; returns the message so callers can look for substrings in it.
template <class E = std::invalid_argument, class F>
std::string thrown_message(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (...) {
    FAIL("threw an exception of the wrong type");
    return "";
  }
  FAIL("did not throw");
  return "";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::vector<double> iota(std::size_t n, double start = 0.0) {
  std::vector<double> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = start + static_cast<double>(i);
  return v;
}

}  // namespace

TEST_CASE("Shape: str, numel, indexing") {
  CHECK(Shape{64, 784}.str() == "(64, 784)");
  CHECK(Shape{5}.str() == "(5,)");  // Python's one-tuple spelling
  CHECK(Shape{}.str() == "()");
  CHECK(Shape{2, 3, 4, 5}.numel() == 120);
  CHECK(Shape{}.numel() == 1);  // a scalar holds one value
  CHECK(Shape{3, 0, 2}.numel() == 0);
  CHECK(Shape{1, 1}.numel() == 1);
  const Shape s{2, 3, 4};
  CHECK(s.ndim() == 3);
  CHECK(s[0] == 2);
  CHECK(s[-1] == 4);  // negative indices count from the end
  CHECK(s.vec() == std::vector<int64_t>{2, 3, 4});
  CHECK(Shape(std::vector<int64_t>{2, 3, 4}) == s);
  CHECK(Shape{2, 3} != Shape{3, 2});
  CHECK(Shape{2, 3} != Shape{2, 3, 1});
  CHECK(has(thrown_message<std::out_of_range>([&] { (void)s[3]; }), "(2, 3, 4)"));
  CHECK_THROWS_AS((void)s[-4], std::out_of_range);
}

TEST_CASE("Shape: more than 4 dimensions and negative extents are rejected") {
  CHECK_NOTHROW(Shape{1, 2, 3, 4});
  CHECK(has(thrown_message([] { Shape{1, 2, 3, 4, 5}; }), "at most 4"));
  CHECK(has(thrown_message([] { Shape(std::vector<int64_t>(5, 1)); }), "got 5"));
  const std::string m = thrown_message([] { Shape{3, -2}; });
  CHECK(has(m, "-2"));
  CHECK(has(m, "dimension 1"));
}

TEST_CASE("Tensor: creation") {
  const Tensor e = Tensor::empty({3, 4});
  CHECK(e.defined());
  CHECK(e.shape() == Shape{3, 4});
  CHECK(e.dtype() == DType::f32);  // the default dtype
  CHECK(e.device() == iif::Device::cpu());
  CHECK(e.nbytes() == 48);
  CHECK(Tensor::empty({3, 4}, DType::f64).nbytes() == 96);
  CHECK_FALSE(Tensor().defined());

  CHECK(Tensor::zeros({2, 3}, DType::f64).to_vector() == std::vector<double>(6, 0.0));
  CHECK(Tensor::full({5}, 2.5).to_vector() == std::vector<double>(5, 2.5));
  // full() rounds its value to the dtype: 0.1 is not a float.
  CHECK(Tensor::full({1}, 0.1, DType::f32).item() == static_cast<double>(0.1f));
  CHECK(Tensor::full({1}, 0.1, DType::f64).item() == 0.1);

  const Tensor a = Tensor::from_vector(iota(6), {2, 3}, DType::f64);
  CHECK(a.dtype() == DType::f64);
  CHECK(a.to_vector() == iota(6));
  CHECK(a.data<double>()[4] == 4.0);  // row-major: element (1, 1)
  const Tensor b = Tensor::from_vector(std::vector<float>{1.5f, -2.f}, {2});
  CHECK(b.dtype() == DType::f32);
  CHECK(b.to_vector() == std::vector<double>{1.5, -2.0});
  // from_vector(double) converts to the requested dtype.
  CHECK(Tensor::from_vector({0.1}, {1}, DType::f32).data<float>()[0] == 0.1f);
}

TEST_CASE("Tensor: from_vector needs exactly numel values") {
  const std::string m = thrown_message([] { Tensor::from_vector(iota(5), {2, 3}); });
  CHECK(has(m, "5 values"));
  CHECK(has(m, "(2, 3)"));
  CHECK_THROWS_AS(Tensor::from_vector(std::vector<float>(7), {2, 3}), std::invalid_argument);
}

TEST_CASE("Tensor: reshape is a view sharing storage") {
  Tensor a = Tensor::from_vector(iota(12), {3, 4}, DType::f64);
  Tensor r = a.reshape({2, 2, 3});
  CHECK(r.shape() == Shape{2, 2, 3});
  CHECK(r.same_storage(a));
  CHECK(r.to_vector() == a.to_vector());
  r.data<double>()[7] = -1.0;  // writes through the view land in the original
  CHECK(a.data<double>()[7] == -1.0);
  CHECK(a.reshape({12}).shape() == Shape{12});
  CHECK_THROWS_AS(a.reshape({}), std::invalid_argument);  // () holds one element, a holds 12
  const std::string m = thrown_message([&] { a.reshape({5, 2}); });
  CHECK(has(m, "(3, 4)"));
  CHECK(has(m, "(5, 2)"));
}

TEST_CASE("Tensor: rows() views and bounds") {
  Tensor a = Tensor::from_vector(iota(24), {4, 3, 2}, DType::f64);
  Tensor r = a.rows(1, 3);
  CHECK(r.shape() == Shape{2, 3, 2});
  CHECK(r.to_vector() == iota(12, 6.0));  // rows 1 and 2 start at element 6
  r.data<double>()[0] = 100.0;
  CHECK(a.data<double>()[6] == 100.0);
  CHECK_FALSE(r.same_storage(a));  // same storage, different region
  CHECK(a.rows(0, 4).same_storage(a));
  CHECK(a.rows(4, 4).numel() == 0);   // an empty range at the end is legal
  CHECK(a.rows(2, 3).rows(0, 1).to_vector() == iota(6, 12.0));  // a view of a view

  // f32 offsets are in elements of 4 bytes, not 8.
  const Tensor f = Tensor::from_vector(iota(6), {3, 2}, DType::f32);
  CHECK(f.rows(2, 3).to_vector() == std::vector<double>{4.0, 5.0});

  CHECK(has(thrown_message([&] { a.rows(3, 5); }), "(4, 3, 2)"));
  CHECK(has(thrown_message([&] { a.rows(-1, 2); }), "[-1, 2)"));
  CHECK_THROWS_AS(a.rows(3, 2), std::invalid_argument);
  CHECK_THROWS_AS(Tensor::full({}, 1.0).rows(0, 1), std::invalid_argument);  // a scalar has no rows
}

TEST_CASE("Tensor: clone is independent") {
  Tensor a = Tensor::from_vector(iota(6), {2, 3}, DType::f32);
  Tensor c = a.clone();
  CHECK(c.shape() == a.shape());
  CHECK(c.dtype() == a.dtype());
  CHECK_FALSE(c.same_storage(a));
  c.data<float>()[0] = 42.f;
  CHECK(a.data<float>()[0] == 0.f);
  // Cloning a row view copies just that region.
  Tensor v = a.rows(1, 2).clone();
  CHECK(v.to_vector() == iota(3, 3.0));
}

TEST_CASE("Tensor: dtype conversion with to() and copy_from") {
  const std::vector<double> vals{0.1, -3.0, 1e30, 0.5};
  const Tensor d = Tensor::from_vector(vals, {2, 2}, DType::f64);
  const Tensor f = d.to(DType::f32);
  CHECK(f.dtype() == DType::f32);
  CHECK(f.shape() == d.shape());
  for (int i = 0; i < 4; ++i) CHECK(f.data<float>()[i] == static_cast<float>(vals[i]));
  const Tensor back = f.to(DType::f64);
  CHECK(back.data<double>()[0] == static_cast<double>(0.1f));
  // Converting to the dtype a tensor already has returns the same tensor, not a copy
  // (like torch.Tensor.to); use clone() for a copy.
  CHECK(d.to(DType::f64).same_storage(d));
  CHECK(d.to(iif::Device::cpu()).same_storage(d));

  Tensor dst = Tensor::zeros({2, 2}, DType::f32);
  dst.copy_from(d);  // converts
  CHECK(dst.to_vector() == f.to_vector());
  Tensor dst2 = Tensor::zeros({4}, DType::f64);
  dst2.copy_from(f.reshape({4}));
  CHECK(dst2.to_vector() == back.to_vector());
  // Copying into a row view writes only that region.
  Tensor big = Tensor::zeros({3, 2}, DType::f64);
  Tensor mid = big.rows(1, 2);
  mid.copy_from(Tensor::from_vector({7.0, 8.0}, {1, 2}, DType::f32));
  CHECK(big.to_vector() == std::vector<double>{0, 0, 7, 8, 0, 0});

  const std::string m = thrown_message([&] { dst.copy_from(Tensor::zeros({3, 2})); });
  CHECK(has(m, "(3, 2)"));
  CHECK(has(m, "(2, 2)"));
  // An undefined tensor is neither a source nor a destination.
  CHECK_THROWS_AS(dst.copy_from(Tensor()), std::invalid_argument);
  Tensor undef;
  CHECK_THROWS_AS(undef.copy_from(Tensor::zeros({})), std::invalid_argument);
  CHECK_THROWS_AS(Tensor().item(), std::invalid_argument);
}

TEST_CASE("Tensor: item() and data<T>()") {
  CHECK(Tensor::full({1, 1}, -2.0).item() == -2.0);
  CHECK(Tensor::full({}, 3.0, DType::f64).item() == 3.0);
  CHECK(has(thrown_message([] { Tensor::zeros({2}).item(); }), "(2,)"));
  CHECK_THROWS_AS(Tensor::zeros({0}).item(), std::invalid_argument);

  const Tensor f = Tensor::zeros({2});
  const Tensor d = Tensor::zeros({2}, DType::f64);
  CHECK(f.data<float>() != nullptr);
  CHECK(has(thrown_message([&] { f.data<double>(); }), "float32"));
  CHECK(has(thrown_message([&] { d.data<float>(); }), "float64"));
}

TEST_CASE("Tensor: sizes 0 and 1") {
  for (DType dt : {DType::f32, DType::f64}) {
    CAPTURE(iif::dtype_name(dt));
    const Tensor z = Tensor::zeros({0, 5}, dt);
    CHECK(z.numel() == 0);
    CHECK(z.nbytes() == 0);
    CHECK(z.defined());
    CHECK(z.to_vector().empty());
    CHECK(z.clone().shape() == Shape{0, 5});
    CHECK(z.reshape({5, 0}).shape() == Shape{5, 0});
    CHECK(z.rows(0, 0).numel() == 0);
    CHECK(z.to(dt == DType::f32 ? DType::f64 : DType::f32).numel() == 0);
    const Tensor cols0 = Tensor::zeros({3, 0}, dt);
    CHECK(cols0.rows(1, 3).shape() == Shape{2, 0});
    Tensor z2 = Tensor::empty({0}, dt);
    CHECK_NOTHROW(z2.copy_from(Tensor::zeros({0}, DType::f64)));

    const Tensor one = Tensor::from_vector({4.0}, {1}, dt);
    CHECK(one.item() == 4.0);
    CHECK(one.reshape({1, 1, 1, 1}).item() == 4.0);
    CHECK(one.rows(0, 1).item() == 4.0);
    CHECK(one.clone().item() == 4.0);
  }
}

TEST_CASE("shape, dtype and ndim checks name what they compare") {
  const Tensor a = Tensor::zeros({3, 4}), b = Tensor::zeros({4, 3});
  std::string m = thrown_message([&] { iif::check_same_shape("myop", a, b); });
  CHECK(has(m, "myop"));
  CHECK(has(m, "(3, 4)"));
  CHECK(has(m, "(4, 3)"));
  CHECK_NOTHROW(iif::check_same_shape("myop", a, a.clone()));
  m = thrown_message([&] { iif::check_same_dtype("myop", a, Tensor::zeros({3, 4}, DType::f64)); });
  CHECK(has(m, "float32"));
  CHECK(has(m, "float64"));
  m = thrown_message([&] { iif::check_ndim("myop", a, 3); });
  CHECK(has(m, "3-D"));
  CHECK(has(m, "(3, 4)"));
}
