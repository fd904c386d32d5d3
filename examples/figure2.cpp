// Figure 2 of the paper: for one test image, the top-8 proponents (most helpful: most negative S)
// and top-8 opponents (most harmful: most positive S) of each method, as a PNG grid: one row per
// method, the test image first, proponents on the left, opponents on the right, the label (a
// class name on CIFAR-10) and score under each image. IIF uses the paper's directional baselines
// (section 3.2): proponents from the baseline that raises the test loss, opponents from the one
// that lowers it. MNIST (the MLP; grey thumbnails) or CIFAR-10 (ResNet-9; colour thumbnails),
// with the paper's recipe for each (apps/setup.h); theta* and TracIn's checkpoints are cached
// under --cache-dir and reused by a later run with the same settings.
//   usage: figure2 [--data mnist|cifar10] [--data-dir DIR] [--n-train N (5000; cifar10 1000)]
//                  [--n-test N (1000; cifar10 500)] [--test-index -1 (most ambiguous)]
//                  [--epochs, --lr, ... as iif train] [--proj-dim 256]
//                  [--out runs/figure2.png (cifar10: runs/figure2-cifar10.png)]
//                  [--cache-dir runs/models]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "apps/cli_args.h"
#include "apps/setup.h"
#include "attribution/iif.h"
#include "attribution/methods.h"
#include "engine/ops.h"
#include "engine/png.h"
#include "nn/datasets.h"
#include "nn/trainer.h"

using namespace iif;

namespace {

// The test image whose top two class probabilities are closest (the model is torn between them).
int64_t most_ambiguous(nn::Model& model, const data::Dataset& test, int64_t& c1, int64_t& c2) {
  const std::vector<double> p = ops::softmax(nn::predict(model, test.images)).to_vector();
  const int64_t c = test.num_classes;
  int64_t best = 0;
  double best_gap = 2.0;
  for (int64_t i = 0; i < test.size(); ++i) {
    std::vector<int64_t> order(static_cast<std::size_t>(c));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[i * c + a] > p[i * c + b]; });
    const double gap = p[i * c + order[0]] - p[i * c + order[1]];
    if (gap < best_gap) {
      best_gap = gap;
      best = i;
      c1 = order[0];
      c2 = order[1];
    }
  }
  return best;
}

// Image i of d in [0, 1] for display (CHW): the loaders' normalisation undone, x * std + mean.
std::vector<float> image_of(const data::Dataset& d, int64_t i) {
  const std::vector<double> v = d.images.rows(i, i + 1).to_vector();
  const bool colour = d.images.ndim() == 4 && d.images.dim(1) == 3;
  const std::size_t plane = colour ? v.size() / 3 : v.size();
  std::vector<float> out(v.size());
  for (std::size_t k = 0; k < v.size(); ++k) {
    const std::size_t c = k / plane;
    out[k] = colour ? static_cast<float>(v[k] * data::kCifarStd[c] + data::kCifarMean[c])
                    : static_cast<float>(v[k] * data::kMnistStd + data::kMnistMean);
  }
  return out;
}

// What is written under an image: the class name on CIFAR-10, the digit on MNIST.
std::string class_name(const std::string& data, int64_t label) {
  static const char* const kCifar[] = {"airplane", "automobile", "bird", "cat", "deer",
                                       "dog", "frog", "horse", "ship", "truck"};
  if (data == "cifar10" && label >= 0 && label < 10) return kCifar[label];
  return std::to_string(label);
}

struct Row {
  std::string name;
  std::vector<int64_t> proponents, opponents;
  std::vector<double> pro_scores, opp_scores;
};

// Indices of the k smallest (ascending = true) or largest scores.
std::vector<int64_t> top_k(const std::vector<double>& s, int k, bool smallest) {
  std::vector<int64_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int64_t a, int64_t b) { return smallest ? s[a] < s[b] : s[a] > s[b]; });
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1e", v);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_program("figure2", [&]() -> int {
    cli::Args a(argc, argv, 1, {"quiet"});
    const bool cifar = a.str("data", "mnist") == "cifar10";
    cli::Setup s = cli::read_setup(a, cifar ? 1000 : 5000, cifar ? 500 : 1000);
    int64_t test_index = a.integer("test-index", -1, -1);
    const int64_t p_dim = a.integer("proj-dim", 256, 1);
    const std::string out = a.str("out", cifar ? "runs/figure2-cifar10.png" : "runs/figure2.png");
    const std::string cache_dir = a.str("cache-dir", "runs/models");
    const bool quiet = a.flag("quiet");
    s.recipe.progress = !quiet;
    a.check_all_used();

    const data::Dataset train = cli::load(s, data::Split::train, s.n_train);
    const data::Dataset test = cli::load(s, data::Split::test, s.n_test);
    attr::LabeledSet tr{train.images, train.labels, train.num_classes};
    std::vector<attr::TracInCheckpoint> ckpts;
    auto model = cli::get_model(s, tr, &ckpts, 5, cache_dir);

    int64_t c1 = -1, c2 = -1;
    if (test_index < 0) test_index = most_ambiguous(*model, test, c1, c2);
    std::fprintf(stderr, "test image %lld (%s)%s\n", (long long)test_index,
                 class_name(s.data, test.labels[test_index]).c_str(),
                 c1 >= 0 ? (", torn between " + class_name(s.data, c1) + " and " + class_name(s.data, c2)).c_str() : "");
    attr::LabeledSet te{test.images.rows(test_index, test_index + 1), {test.labels[test_index]}, test.num_classes};

    attr::MethodOptions o;
    o.projector.dim = p_dim;
    o.progress = false;
    std::vector<Row> rows;
    auto column = [](const Tensor& s) { return s.to_vector(); };  // (N, 1) -> N values
    {
      Row r{"IIF"};
      attr::IifOptions io;
      io.common = o;
      io.baseline_direction = +1;
      attr::Iif up(io);
      up.fit(*model, tr);
      const auto s_up = column(up.score(te));
      io.baseline_direction = -1;
      attr::Iif down(io);
      down.fit(*model, tr);
      const auto s_down = column(down.score(te));
      r.proponents = top_k(s_up, 8, true);
      r.opponents = top_k(s_down, 8, false);
      for (int64_t i : r.proponents) r.pro_scores.push_back(s_up[i]);
      for (int64_t i : r.opponents) r.opp_scores.push_back(s_down[i]);
      rows.push_back(r);
    }
    std::vector<std::pair<std::string, std::unique_ptr<attr::Method>>> others;
    others.emplace_back("IF", attr::make_if_fisher(o));
    others.emplace_back("TracIn", attr::make_tracin(o, ckpts));
    others.emplace_back("TRAK", attr::make_trak(o, {}));
    for (auto& [name, m] : others) {
      m->fit(*model, tr);
      const auto s = column(m->score(te));
      Row r{name};
      r.proponents = top_k(s, 8, true);
      r.opponents = top_k(s, 8, false);
      for (int64_t i : r.proponents) r.pro_scores.push_back(s[i]);
      for (int64_t i : r.opponents) r.opp_scores.push_back(s[i]);
      rows.push_back(r);
      if (!quiet) std::fprintf(stderr, "%s done\n", name.c_str());
    }

    // Layout: cells of 2x-scaled images (28 px MNIST, 32 px CIFAR-10) with two text lines under each.
    const int channels = static_cast<int>(train.images.dim(1));  // (N, C, H, W) from both loaders
    const int side = static_cast<int>(train.images.dim(3));
    const int scale = 2, img = side * scale, pad = 10, label_h = 20, name_w = 84;
    const int cell_w = img + pad, cell_h = img + label_h + pad;
    const int width = name_w + cell_w * (1 + 8 + 8) + 3 * pad;
    const int height = 30 + cell_h * static_cast<int>(rows.size());
    png::Canvas cv(width, height);
    const png::Color black{0, 0, 0}, green{0, 120, 0}, red{170, 0, 0};
    cv.draw_text(name_w + cell_w + 2 * pad, 8, "PROPONENTS (MOST NEGATIVE S)", green, 2);
    cv.draw_text(name_w + cell_w * 9 + 3 * pad, 8, "OPPONENTS (MOST POSITIVE S)", red, 2);
    for (std::size_t r = 0; r < rows.size(); ++r) {
      const int y = 30 + static_cast<int>(r) * cell_h;
      cv.draw_text(4, y + img / 2 - 7, rows[r].name, black, 2);
      cv.draw_image(name_w, y, image_of(test, test_index), channels, side, side, scale);
      cv.draw_text(name_w, y + img + 3, class_name(s.data, test.labels[test_index]), black);
      cv.draw_text(name_w, y + img + 12, "TEST", black);
      for (int k = 0; k < 8; ++k) {
        const int xp = name_w + cell_w * (1 + k) + 2 * pad, xo = name_w + cell_w * (9 + k) + 3 * pad;
        cv.draw_image(xp, y, image_of(train, rows[r].proponents[k]), channels, side, side, scale);
        cv.draw_text(xp, y + img + 3, class_name(s.data, train.labels[rows[r].proponents[k]]), green);
        cv.draw_text(xp, y + img + 12, fmt(rows[r].pro_scores[k]), green);
        cv.draw_image(xo, y, image_of(train, rows[r].opponents[k]), channels, side, side, scale);
        cv.draw_text(xo, y + img + 3, class_name(s.data, train.labels[rows[r].opponents[k]]), red);
        cv.draw_text(xo, y + img + 12, fmt(rows[r].opp_scores[k]), red);
      }
    }
    cv.save(out);
    std::printf("figure: %s (test image %lld, %s)\n", out.c_str(), (long long)test_index,
                class_name(s.data, test.labels[test_index]).c_str());
    return 0;
  });
}
