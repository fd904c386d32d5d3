// Model builders (see nn/models.h).
#include "nn/models.h"

#include "nn/resnet.h"

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

std::unique_ptr<Model> Model::clone() const {
  Init init;
  init.dtype = dtype();
  init.device = device();
  auto m = make_model(spec(), init);
  m->copy_parameters_from(*this);
  m->set_training(training_);
  return m;
}

void Model::copy_parameters_from(const Model& other) {
  auto& self = const_cast<Model&>(other);
  auto mine = named_parameters();
  auto theirs = self.named_parameters();
  auto my_buffers = named_buffers();
  auto their_buffers = self.named_buffers();
  if (mine.size() != theirs.size() || my_buffers.size() != their_buffers.size() || spec() != other.spec())
    throw std::invalid_argument("Model::copy_parameters_from: model " + other.spec() +
                                " does not match " + spec());
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i].var->mutable_value().copy_from(theirs[i].var->value());
  for (std::size_t i = 0; i < my_buffers.size(); ++i) my_buffers[i].tensor->copy_from(*their_buffers[i].tensor);
}

DType Model::dtype() const {
  const auto params = const_cast<Model*>(this)->named_parameters();
  if (params.empty()) throw std::logic_error("Model " + spec() + " has no parameters");
  return params[0].var->value().dtype();
}

Device Model::device() const {
  const auto params = const_cast<Model*>(this)->named_parameters();
  if (params.empty()) throw std::logic_error("Model " + spec() + " has no parameters");
  return params[0].var->value().device();
}

std::string Mlp::spec() const {
  std::ostringstream s;
  s << "mlp:";
  for (std::size_t i = 0; i < sizes_.size(); ++i) s << (i ? "-" : "") << sizes_[i];
  s << ",dropout=" << dropout_ << ",bias=" << (bias_ ? 1 : 0);
  return s.str();
}

namespace {

std::unique_ptr<Model> make_mlp(const ModelSpec& spec, const Init& init) {
  double dropout = 0.1;
  bool bias = true;
  std::vector<int64_t> sizes{784, 128, 64, 10};
  if (spec.kind == "linear") {
    dropout = 0.0;
    bias = false;
    if (spec.arg.empty()) throw std::invalid_argument("model spec '" + spec.text + "': use linear:<inputs>");
    sizes = parse_dims(spec, "input count");
    if (sizes.size() == 1) sizes.push_back(1);
  } else if (!spec.arg.empty()) {
    sizes = parse_dims(spec, "layer size");
  }
  for (const auto& [k, v] : spec.options) {
    try {
      if (k == "dropout") dropout = std::stod(v);
      else if (k == "bias") bias = std::stoi(v) != 0;
      else throw std::invalid_argument("unknown option");
    } catch (const std::exception&) {
      throw std::invalid_argument("model spec '" + spec.text + "': bad option '" + k + "=" + v +
                                  "' (expected dropout=<p> or bias=0|1)");
    }
  }
  return std::make_unique<Mlp>(sizes, dropout, bias, init);
}

struct Registered {
  ModelFactory factory;
  std::string usage;
};

std::map<std::string, Registered>& registry() {
  static std::map<std::string, Registered> r = {
      {"mlp", {make_mlp, "mlp[:<sizes, e.g. 784-128-64-10>][,dropout=<p>][,bias=0|1]"}},
      {"linear", {make_mlp, "linear:<inputs>"}},
      {"resnet9", {make_resnet9, "resnet9[:<8 channel counts>][,classes=<n>][,dropout=<p>][,scale=<s>]"}},
  };
  return r;
}

}  // namespace

ModelSpec parse_model_spec(const std::string& spec) {
  ModelSpec m;
  m.text = spec;
  std::string head = spec, opts;
  if (auto c = spec.find(','); c != std::string::npos) {
    head = spec.substr(0, c);
    opts = spec.substr(c + 1);
  }
  m.kind = head;
  if (auto c = head.find(':'); c != std::string::npos) {
    m.kind = head.substr(0, c);
    m.arg = head.substr(c + 1);
  }
  std::stringstream os(opts);
  std::string kv;
  while (std::getline(os, kv, ',')) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos)
      throw std::invalid_argument("model spec '" + spec + "': option '" + kv + "' is not <key>=<value>");
    m.options.push_back({kv.substr(0, eq), kv.substr(eq + 1)});
  }
  return m;
}

std::vector<int64_t> parse_dims(const ModelSpec& spec, const std::string& what) {
  std::vector<int64_t> dims;
  std::stringstream ss(spec.arg);
  std::string item;
  while (std::getline(ss, item, '-')) {
    try {
      std::size_t used = 0;
      const long long v = std::stoll(item, &used);
      if (used != item.size() || v <= 0) throw std::invalid_argument("");
      dims.push_back(v);
    } catch (const std::exception&) {
      throw std::invalid_argument("model spec '" + spec.text + "': " + what + " '" + item +
                                  "' is not a positive integer");
    }
  }
  return dims;
}

void register_model(const std::string& kind, ModelFactory factory, const std::string& usage) {
  if (kind.empty() || kind.find_first_of(":,=") != std::string::npos)
    throw std::invalid_argument("register_model: kind '" + kind + "' must be non-empty without ':', ',' or '='");
  registry()[kind] = {std::move(factory), usage};
}

std::unique_ptr<Model> make_model(const std::string& spec, const Init& init) {
  const ModelSpec m = parse_model_spec(spec);
  const auto& r = registry();
  auto it = r.find(m.kind);
  if (it == r.end()) {
    std::string list;
    for (const auto& [k, reg] : r) list += (list.empty() ? "" : ", ") + reg.usage;
    throw std::invalid_argument("model spec '" + spec + "': unknown model '" + m.kind + "' (expected " +
                                list + ")");
  }
  return it->second.factory(m, init);
}

}  // namespace nn
}  // namespace iif
