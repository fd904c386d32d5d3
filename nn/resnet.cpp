// ResNet-9 (see nn/resnet.h).
#include "nn/resnet.h"

#include <sstream>
#include <stdexcept>

#include "nn/vision.h"

namespace iif {
namespace nn {

namespace {
std::unique_ptr<Sequential> conv_bn(int64_t in, int64_t out, const Init& init, uint64_t& stream) {
  auto s = std::make_unique<Sequential>();
  s->add(std::make_unique<Conv2d>(in, out, 3, 1, 1, false, init, stream++));
  s->add(std::make_unique<BatchNorm2d>(out, init));
  s->add(std::make_unique<ReLU>());
  return s;
}
}  // namespace

ResNet9::ResNet9(std::vector<int64_t> ch, int64_t classes, double dropout, double scale, const Init& init)
    : channels_(std::move(ch)), classes_(classes), dropout_(dropout), scale_(scale) {
  const auto& c = channels_;
  if (c.size() != 8)
    throw std::invalid_argument("ResNet9: 8 channel counts expected, got " + std::to_string(c.size()));
  if (c[3] != c[1] || c[7] != c[5])
    throw std::invalid_argument("ResNet9: a residual branch must keep its width (c4 = c2 and c8 = c6), got " +
                                spec());
  uint64_t stream = 0;
  net.add(conv_bn(3, c[0], init, stream));
  net.add(conv_bn(c[0], c[1], init, stream));
  net.add(std::make_unique<MaxPool2d>(2));
  auto r1 = std::make_unique<Residual>();
  r1->add(conv_bn(c[1], c[2], init, stream));
  r1->add(conv_bn(c[2], c[3], init, stream));
  net.add(std::move(r1));
  net.add(conv_bn(c[3], c[4], init, stream));
  net.add(std::make_unique<MaxPool2d>(2));
  net.add(conv_bn(c[4], c[5], init, stream));
  net.add(std::make_unique<MaxPool2d>(2));
  auto r2 = std::make_unique<Residual>();
  r2->add(conv_bn(c[5], c[6], init, stream));
  r2->add(conv_bn(c[6], c[7], init, stream));
  net.add(std::move(r2));
  net.add(std::make_unique<GlobalMaxPool2d>());
  net.add(std::make_unique<Flatten>());
  net.add(std::make_unique<Dropout>(dropout, init.seed, 0));
  net.add(std::make_unique<Linear>(c[7], classes, true, init, 1000));
  if (scale != 1.0) net.add(std::make_unique<Scale>(scale));
}

std::string ResNet9::spec() const {
  std::ostringstream s;
  s << "resnet9:";
  for (std::size_t i = 0; i < channels_.size(); ++i) s << (i ? "-" : "") << channels_[i];
  s << ",classes=" << classes_ << ",dropout=" << dropout_;
  if (scale_ != 1.0) s << ",scale=" << scale_;
  return s.str();
}

std::unique_ptr<Model> make_resnet9(const ModelSpec& spec, const Init& init) {
  std::vector<int64_t> ch{64, 128, 128, 128, 256, 512, 512, 512};
  if (!spec.arg.empty()) {
    ch = parse_dims(spec, "channel count");
    if (ch.size() != 8)
      throw std::invalid_argument("model spec '" + spec.text + "': " + std::to_string(ch.size()) +
                                  " channel counts (expected 8, e.g. resnet9:64-128-128-128-256-512-512-512)");
  }
  int64_t classes = 10;
  double dropout = 0.1, scale = 1.0;
  for (const auto& [k, v] : spec.options) {
    try {
      if (k == "classes") classes = std::stoll(v);
      else if (k == "dropout") dropout = std::stod(v);
      else if (k == "scale") scale = std::stod(v);
      else throw std::invalid_argument("unknown option");
    } catch (const std::exception&) {
      throw std::invalid_argument("model spec '" + spec.text + "': bad option '" + k + "=" + v +
                                  "' (expected classes=<n>, dropout=<p> or scale=<s>)");
    }
  }
  return std::make_unique<ResNet9>(ch, classes, dropout, scale, init);
}

}  // namespace nn
}  // namespace iif
