// Small helpers shared by the test suites.
#pragma once

#include <doctest/doctest.h>

#include <functional>
#include <stdexcept>
#include <string>

namespace iif_test {

// The message of the exception `f` throws; fails the test if it throws nothing.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  FAIL_CHECK("expected an exception, nothing was thrown");
  return "";
}

inline bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace iif_test
