// Model builders (see nn/models.h).
#include "nn/models.h"

#include <sstream>
#include <stdexcept>

namespace iif {
namespace nn {

Mlp::Mlp(std::vector<int64_t> sizes, double dropout, bool bias, const Init& init)
    : sizes_(std::move(sizes)), dropout_(dropout), bias_(bias) {
  if (sizes_.size() < 2)
    throw std::invalid_argument("Mlp: need at least an input and an output size");
  for (std::size_t i = 0; i + 1 < sizes_.size(); ++i) {
    layers.add(std::make_unique<Linear>(sizes_[i], sizes_[i + 1], bias, init, i));
    if (i + 2 < sizes_.size()) {
      layers.add(std::make_unique<ReLU>());
      if (dropout > 0.0) layers.add(std::make_unique<Dropout>(dropout, init.seed, i));
    }
  }
}

Var Mlp::forward(const Var& x) {
  const Shape& s = x.shape();
  Var h = x;
  if (s.ndim() != 2) {
    const int64_t b = s.ndim() ? s[0] : 0;
    h = ad::reshape(x, {b, b ? s.numel() / b : 0});
  }
  return layers.forward(h);
}

void Mlp::collect_parameters(const std::string& prefix, std::vector<NamedParameter>& out) {
  layers.collect_parameters(prefix + "layers.", out);
}

void Mlp::collect_parametric_layers(std::vector<ParametricLayer*>& out) {
  layers.collect_parametric_layers(out);
}

void Mlp::set_training(bool on) {
  training_ = on;
  layers.set_training(on);
}

void Mlp::set_dropout_seed(uint64_t seed) {
  for (std::size_t i = 0; i < layers.size(); ++i)
    if (auto* d = dynamic_cast<Dropout*>(&layers[i])) d->set_seed(seed);
}

std::unique_ptr<Mlp> Mlp::clone() const {
  Init init;
  const auto params = const_cast<Mlp*>(this)->named_parameters();
  init.dtype = params.at(0).var->value().dtype();
  init.device = params.at(0).var->value().device();
  auto m = std::make_unique<Mlp>(sizes_, dropout_, bias_, init);
  m->copy_parameters_from(*this);
  m->set_training(training_);
  return m;
}

void Mlp::copy_parameters_from(const Mlp& other) {
  auto mine = named_parameters();
  auto theirs = const_cast<Mlp&>(other).named_parameters();
  if (mine.size() != theirs.size() || spec() != other.spec())
    throw std::invalid_argument("Mlp::copy_parameters_from: model " + other.spec() +
                                " does not match " + spec());
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i].var->mutable_value().copy_from(theirs[i].var->value());
}

std::string Mlp::spec() const {
  std::ostringstream s;
  s << "mlp:";
  for (std::size_t i = 0; i < sizes_.size(); ++i) s << (i ? "-" : "") << sizes_[i];
  s << ",dropout=" << dropout_ << ",bias=" << (bias_ ? 1 : 0);
  return s.str();
}

namespace {
std::vector<int64_t> parse_sizes(const std::string& spec, const std::string& text) {
  std::vector<int64_t> sizes;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, '-')) {
    try {
      std::size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v <= 0) throw std::invalid_argument("");
      sizes.push_back(v);
    } catch (const std::exception&) {
      throw std::invalid_argument("model spec '" + spec + "': layer size '" + item +
                                  "' is not a positive integer");
    }
  }
  return sizes;
}
}  // namespace

std::unique_ptr<Mlp> make_model(const std::string& spec, const Init& init) {
  std::string head = spec, opts;
  if (auto c = spec.find(','); c != std::string::npos) {
    head = spec.substr(0, c);
    opts = spec.substr(c + 1);
  }
  std::string kind = head, arg;
  if (auto c = head.find(':'); c != std::string::npos) {
    kind = head.substr(0, c);
    arg = head.substr(c + 1);
  }
  double dropout = 0.1;
  bool bias = true;
  std::vector<int64_t> sizes{784, 128, 64, 10};
  if (kind == "linear") {
    dropout = 0.0;
    bias = false;
    if (arg.empty()) throw std::invalid_argument("model spec '" + spec + "': use linear:<inputs>");
    sizes = parse_sizes(spec, arg);
    if (sizes.size() == 1) sizes.push_back(1);
  } else if (kind == "mlp") {
    if (!arg.empty()) sizes = parse_sizes(spec, arg);
  } else {
    throw std::invalid_argument("model spec '" + spec + "': unknown model '" + kind +
                                "' (expected mlp, mlp:<sizes>, or linear:<inputs>)");
  }
  std::stringstream os(opts);
  std::string kv;
  while (std::getline(os, kv, ',')) {
    const auto eq = kv.find('=');
    const std::string k = kv.substr(0, eq), v = eq == std::string::npos ? "" : kv.substr(eq + 1);
    try {
      if (k == "dropout") dropout = std::stod(v);
      else if (k == "bias") bias = std::stoi(v) != 0;
      else throw std::invalid_argument("unknown option");
    } catch (const std::exception&) {
      throw std::invalid_argument("model spec '" + spec + "': bad option '" + kv +
                                  "' (expected dropout=<p> or bias=0|1)");
    }
  }
  return std::make_unique<Mlp>(sizes, dropout, bias, init);
}

}  // namespace nn
}  // namespace iif
