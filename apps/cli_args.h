// A small command-line option parser for the iif program: "--name value" and "--flag",
// typed getters that say which option was wrong and what was expected, and a check that every
// option given was one the command knows.
#pragma once

#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace iif {
namespace cli {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs a program's body and turns what escapes it into the exit status and message every program
// of the project gives: a UsageError "<name>: <what>" (and "(see <name> --help)" unless the
// message already points there), status 2; any
// other exception "<name>: error: <what>", status 1.
inline int run_program(const std::string& name, const std::function<int()>& body) {
  try {
    return body();
  } catch (const UsageError& e) {
    const bool says_help = std::string(e.what()).find("--help") != std::string::npos;
    std::fprintf(stderr, "%s: %s\n", name.c_str(), e.what());
    if (!says_help) std::fprintf(stderr, "(see %s --help)\n", name.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", name.c_str(), e.what());
    return 1;
  }
}

class Args {
 public:
  // `flags` are options that take no value.
  Args(int argc, char** argv, int first, const std::set<std::string>& flags) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + a + "' (options start with --)");
      a = a.substr(2);
      if (auto eq = a.find('='); eq != std::string::npos) {
        values_[a.substr(0, eq)] = a.substr(eq + 1);
      } else if (flags.count(a)) {
        values_[a] = "1";
      } else {
        if (i + 1 >= argc) throw UsageError("option --" + a + " needs a value");
        values_[a] = argv[++i];
      }
    }
  }

  bool has(const std::string& k) const { used_.insert(k); return values_.count(k) > 0; }
  bool flag(const std::string& k) const { return has(k); }

  std::string str(const std::string& k, const std::string& def) const {
    return has(k) ? values_.at(k) : def;
  }

  int64_t integer(const std::string& k, int64_t def, int64_t min_value) const {
    if (!has(k)) return def;
    const std::string& v = values_.at(k);
    try {
      std::size_t used = 0;
      const long long x = std::stoll(v, &used);
      if (used == v.size() && x >= min_value) return x;
    } catch (const std::exception&) {
    }
    throw UsageError("--" + k + ": expected an integer >= " + std::to_string(min_value) + ", got '" + v + "'");
  }

  double real(const std::string& k, double def, double min_value) const {
    if (!has(k)) return def;
    const std::string& v = values_.at(k);
    try {
      std::size_t used = 0;
      const double x = std::stod(v, &used);
      if (used == v.size() && x >= min_value) return x;
    } catch (const std::exception&) {
    }
    throw UsageError("--" + k + ": expected a number >= " + std::to_string(min_value) + ", got '" + v + "'");
  }

  // Throws for any option given that no getter asked about.
  void check_all_used() const {
    for (auto& [k, v] : values_)
      if (!used_.count(k)) throw UsageError("unknown option --" + k + " (see --help)");
  }

 private:
  std::map<std::string, std::string> values_;
  mutable std::set<std::string> used_;
};

}  // namespace cli
}  // namespace iif
