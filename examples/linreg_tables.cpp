// Reproduces the paper's linear-regression tables (Table 1: Gaussian noise levels; Table 4:
// Laplace noise) with IIF, IF, TracIn and a datamodel ceiling, printing the paper's numbers
// beside ours, and (with --investigate) runs the validation-seed study of the choices the paper
// leaves open (docs/linreg.md). JSON lines go to --json FILE.
//
//   linreg_tables [--trials 100] [--subsets 5000] [--alpha 0.3] [--K 10] [--mu 1 | --lambda L]
//                 [--seed 0] [--json FILE] [--quick] [--investigate] ...   (--help for all)
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/cli_args.h"
#include "attribution/evaluation.h"
#include "attribution/linreg.h"
#include "engine/progress.h"

namespace lr = iif::attr::linreg;
namespace eval = iif::eval;
using nlohmann::json;

namespace {

// Validation trials are drawn from trial indices >= this, so they never overlap the reported
// trials 0..T-1 whatever the seed (docs/linreg.md).
constexpr uint64_t kValidationTrialBase = uint64_t{1} << 40;

struct Setting {
  std::string table;  // "table1" | "table4"
  std::string name;
  lr::DataSpec spec;
  double paper_iif, paper_if, paper_tracin;
};

std::vector<Setting> make_settings(lr::LaplaceScale scale, double sigma_laplace) {
  auto gauss = [](double sn, double ss) {
    lr::DataSpec s;
    s.sigma_n = sn;
    s.sigma_s = ss;
    return s;
  };
  auto lap = [&](bool train_laplace, bool test_laplace) {
    lr::DataSpec s;
    s.sigma_n = s.sigma_s = sigma_laplace;
    s.train_noise = train_laplace ? lr::NoiseKind::laplace : lr::NoiseKind::gaussian;
    s.test_noise = test_laplace ? lr::NoiseKind::laplace : lr::NoiseKind::gaussian;
    s.laplace_scale = scale;
    return s;
  };
  return {
      {"table1", "sn=0.1,ss=1", gauss(0.1, 1.0), 0.859, 0.856, 0.815},
      {"table1", "sn=1,ss=1", gauss(1.0, 1.0), 0.744, 0.634, 0.607},
      {"table1", "sn=1,ss=0.1", gauss(1.0, 0.1), 0.768, 0.423, 0.405},
      {"table4", "N&L", lap(false, true), 0.789, 0.688, 0.654},
      {"table4", "L&N", lap(true, false), 0.767, 0.571, 0.550},
      {"table4", "L&L", lap(true, true), 0.801, 0.628, 0.601},
  };
}

struct Config {
  int64_t trials = 100, subsets = 5000, dm_subsets = -1, val_trials = 30, n_test = 10;
  double alpha = 0.3;
  uint64_t seed = 0;
  lr::IifOptions iif;
  bool tracin_trajectory = false;
  lr::TracInTrajectory traj;
  lr::LaplaceScale laplace_scale = lr::LaplaceScale::b_is_sigma;
  double sigma_laplace = 1.0;
  std::string json_path;
  bool investigate = false, tables = true, progress = true;
};

// Mean and standard error over trials (NaN trials skipped, counted).
struct Stat {
  std::vector<double> v;
  double mean() const {
    double s = 0;
    int64_t k = 0;
    for (double x : v)
      if (!std::isnan(x)) s += x, ++k;
    return k ? s / k : NAN;
  }
  double se() const {
    const double m = mean();
    double s = 0;
    int64_t k = 0;
    for (double x : v)
      if (!std::isnan(x)) s += (x - m) * (x - m), ++k;
    return k > 1 ? std::sqrt(s / (k - 1) / k) : NAN;
  }
};

std::string fmt(double x, int prec = 3) {
  if (std::isnan(x)) return "nan";
  char b[32];
  std::snprintf(b, sizeof b, "%.*f", prec, x);
  return b;
}

class JsonOut {
 public:
  explicit JsonOut(const std::string& path) {
    if (!path.empty()) {
      f_ = std::make_unique<std::ofstream>(path);
      if (!*f_) throw std::runtime_error("cannot open --json " + path + " for writing");
    }
  }
  void write(const json& j) {
    if (f_) *f_ << j.dump() << "\n";
  }

 private:
  std::unique_ptr<std::ofstream> f_;
};

double lds_of(const std::vector<double>& scores, int64_t n, int64_t cols,
              const eval::Subsets& subsets, const std::vector<std::vector<double>>& losses) {
  return eval::lds(scores, n, cols, subsets, losses).lds;
}

// Scores of IF / TracIn for a problem (per test point).
std::vector<double> tracin_scores(const Config& c, const lr::Problem& p, const lr::Fit& fit) {
  return c.tracin_trajectory ? lr::tracin_trajectory(p, c.traj) : lr::tracin_final(p, fit);
}

// Runs body(t) for every t in [0, count) over OpenMP threads, with a progress line.
void parallel_trials(int64_t count, const std::string& what, bool progress,
                     const std::function<void(int64_t)>& body) {
  iif::Progress prog(what, count, progress);
  int64_t done = 0;
  std::string error;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < count; ++t) {
    try {
      body(t);
    } catch (const std::exception& e) {
#pragma omp critical(linreg_tables_error)
      if (error.empty()) error = e.what();
    }
#pragma omp critical(linreg_tables_progress)
    prog.update(++done);
  }
  prog.finish();
  if (!error.empty()) throw std::runtime_error(error);
}

// ---- the reported tables --------------------------------------------------------------------

void run_tables(const Config& c, JsonOut& out) {
  const auto settings = make_settings(c.laplace_scale, c.sigma_laplace);
  const int64_t S = static_cast<int64_t>(settings.size());
  // IIF-lambda1: the paper's lambda = 1 read literally with the mean MSE (mu = 1/N): the
  // unlearning objective is indefinite for (almost) every test point; its saddle is used and
  // counted, so the row shows what that reading gives.
  const char* methods[] = {"IIF", "IIF-lambda1-meanMSE", "IF", "TracIn", "Datamodel"};
  constexpr int kMethods = 5;
  // lds[s][method][trial]
  std::vector<std::vector<Stat>> lds(S, std::vector<Stat>(kMethods));
  for (auto& row : lds)
    for (auto& st : row) st.v.assign(c.trials, NAN);
  std::vector<std::vector<double>> indefinite(S, std::vector<double>(c.trials, 0));
  std::vector<std::vector<double>> indefinite_l1(S, std::vector<double>(c.trials, 0));
  lr::IifOptions literal = c.iif;
  literal.mu = 1.0 / 100.0;
  literal.on_indefinite = lr::OnIndefinite::flag;
  std::vector<std::vector<double>> compl_err(S, std::vector<double>(c.trials, 0));
  lr::Protocol proto;
  proto.subsets = c.subsets;
  proto.dm_subsets = c.dm_subsets;
  proto.alpha = c.alpha;
  proto.seed = c.seed;
  parallel_trials(c.trials, "linreg tables (trials x 6 settings)", c.progress, [&](int64_t t) {
    for (int64_t s = 0; s < S; ++s) {
      lr::DataSpec spec = settings[s].spec;
      spec.n_test = c.n_test;
      const lr::Problem p = lr::make_problem(spec, c.seed, static_cast<uint64_t>(t));
      const lr::Fit fit = lr::fit_least_squares(p);
      const lr::TrialTruth truth = lr::trial_truth(p, proto, static_cast<uint64_t>(t));
      const lr::IifResult iif = lr::integrated_influence(p, fit, c.iif);
      const int64_t n = p.n, T = p.n_test;
      lds[s][0].v[t] = lds_of(iif.scores, n, T, truth.subsets, truth.losses);
      const lr::IifResult iif1 = lr::integrated_influence(p, fit, literal);
      lds[s][1].v[t] = lds_of(iif1.scores, n, T, truth.subsets, truth.losses);
      indefinite_l1[s][t] = static_cast<double>(iif1.n_indefinite);
      lds[s][2].v[t] = lds_of(lr::influence_function(p, fit), n, T, truth.subsets, truth.losses);
      lds[s][3].v[t] = lds_of(tracin_scores(c, p, fit), n, T, truth.subsets, truth.losses);
      lds[s][4].v[t] = lds_of(truth.datamodel.scores, n, T, truth.subsets, truth.losses);
      indefinite[s][t] = static_cast<double>(iif.n_indefinite);
      double e = 0;  // completeness error relative to the loss gap, averaged over test points
      for (int64_t j = 0; j < T; ++j) {
        const double gap = iif.loss_star[j] - iif.loss_base[j];
        e += std::fabs(iif.score_sum[j] - gap) / std::max(std::fabs(gap), 1e-300) / T;
      }
      compl_err[s][t] = e;
    }
  });

  std::printf("\nLinear regression (N = 100, d = 10), LDS: mean +- standard error over %lld trials;"
              " paper in brackets.\n", (long long)c.trials);
  std::printf("Protocol: %lld test points per trial sharing w, %lld subsets of size %lld (alpha %g)"
              " without replacement, Spearman per test point.\n",
              (long long)c.n_test, (long long)c.subsets, (long long)std::llround(c.alpha * 100),
              c.alpha);
  std::printf("IIF: K = %lld, mu = %g (lambda = %g on the mean MSE), unlearning %s, path %s. "
              "TracIn: %s. Datamodel: ridge on %lld other subsets (a near-ceiling).\n",
              (long long)c.iif.K, c.iif.mu, c.iif.mu * 100,
              c.iif.unlearning == lr::Unlearning::closed_form ? "closed form" : "GD",
              c.iif.path == lr::PathModels::closed_form ? "closed form" : "one SGD epoch (eq. 16)",
              c.tracin_trajectory ? "GD trajectory" : "final checkpoint, lr 1",
              (long long)c.dm_subsets);
  for (const std::string table : {"table1", "table4"}) {
    std::printf("\n%s%s\n", table == "table1" ? "Table 1 (Gaussian noise)" : "Table 4 (Laplace noise)",
                table == "table4" ? (c.laplace_scale == lr::LaplaceScale::b_is_sigma
                                         ? ", sigma_n = sigma_s = 1 as Laplace(0, b = sigma)"
                                         : ", sigma_n = sigma_s = 1 as Laplace(0, b = sigma / sqrt 2)")
                                  : "");
    std::printf("%-20s", "method");
    for (int64_t s = 0; s < S; ++s)
      if (settings[s].table == table) std::printf("  %-22s", settings[s].name.c_str());
    std::printf("\n");
    for (int mi = 0; mi < kMethods; ++mi) {
      std::printf("%-20s", methods[mi]);
      for (int64_t s = 0; s < S; ++s) {
        if (settings[s].table != table) continue;
        const double paper = mi <= 1 ? settings[s].paper_iif
                             : mi == 2 ? settings[s].paper_if
                             : mi == 3 ? settings[s].paper_tracin
                                       : NAN;
        const std::string cell = fmt(lds[s][mi].mean()) + " +-" + fmt(lds[s][mi].se()) +
                                 (std::isnan(paper) ? "        " : " (" + fmt(paper) + ")");
        std::printf("  %-22s", cell.c_str());
        json j = {{"experiment", table}, {"setting", settings[s].name}, {"method", methods[mi]},
                  {"metric", "lds"}, {"value", lds[s][mi].mean()}, {"stderr", lds[s][mi].se()},
                  {"trials", c.trials}, {"subsets", c.subsets}, {"alpha", c.alpha},
                  {"seed", c.seed}};
        j["paper"] = std::isnan(paper) ? json(nullptr) : json(paper);
        if (mi == 0) j["iif"] = {{"K", c.iif.K}, {"mu", c.iif.mu}};
        if (mi == 1) j["iif"] = {{"K", literal.K}, {"mu", literal.mu}, {"lambda_mean_mse", 1.0}};
        out.write(j);
      }
      std::printf("\n");
    }
    std::printf("%-20s", "IIF-IF");
    for (int64_t s = 0; s < S; ++s) {
      if (settings[s].table != table) continue;
      Stat d;
      for (int64_t t = 0; t < c.trials; ++t) d.v.push_back(lds[s][0].v[t] - lds[s][2].v[t]);
      const std::string cell = fmt(d.mean()) + " +-" + fmt(d.se()) + " (" +
                               fmt(settings[s].paper_iif - settings[s].paper_if) + ")";
      std::printf("  %-22s", cell.c_str());
    }
    for (int which = 0; which < 2; ++which) {
      std::printf("\n%-20s", which == 0 ? "saddles: IIF" : "saddles: IIF-lambda1");
      for (int64_t s = 0; s < S; ++s) {
        if (settings[s].table != table) continue;
        double k = 0;
        for (double x : which == 0 ? indefinite[s] : indefinite_l1[s]) k += x;
        const std::string cell = fmt(k, 0) + " of " + std::to_string(c.trials * c.n_test);
        std::printf("  %-22s", cell.c_str());
      }
    }
    std::printf("\n%-20s", "completeness: IIF");
    for (int64_t s = 0; s < S; ++s) {
      if (settings[s].table != table) continue;
      double k = 0;
      for (double x : compl_err[s]) k += x / c.trials;
      const std::string cell = "rel err " + fmt(k, 4);
      std::printf("  %-22s", cell.c_str());
    }
    std::printf("\n");
  }
  std::printf("\nsaddles: test points whose unlearning objective was indefinite (their IIF uses "
              "the saddle point; see --mu). completeness: mean |sum_i S_i - (L(theta*) - L(theta'))| / "
              "|L(theta*) - L(theta')|, = (r* - r')^2 / (K |r*^2 - r'^2|) for the closed forms.\n");
}

// ---- the investigation (validation trials only) ---------------------------------------------

struct Variant {
  std::string group, name;
  lr::IifOptions o;
  bool aggregate = false;  // one test group of all n_test points, summed loss
};

void run_investigation(const Config& c, JsonOut& out) {
  const auto settings = make_settings(c.laplace_scale, c.sigma_laplace);
  const int64_t S = static_cast<int64_t>(settings.size());
  const int64_t V = c.val_trials;
  lr::IifOptions base = c.iif;
  base.on_indefinite = lr::OnIndefinite::flag;

  std::vector<Variant> variants;
  auto add = [&](const std::string& g, const std::string& name,
                 const std::function<void(lr::IifOptions&)>& f, bool aggregate = false) {
    Variant v{g, name, base, aggregate};
    f(v.o);
    variants.push_back(v);
  };
  for (int64_t K : {1, 2, 5, 10, 50})
    add("K", "K=" + std::to_string(K) + ",mu=1", [=](lr::IifOptions& o) { o.K = K; o.mu = 1; });
  for (double mu : {0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 20.0, 100.0})
    add("mu", "mu=" + fmt(mu, 2) + (mu == 0.01 ? "(lambda=1)" : ""),
        [=](lr::IifOptions& o) { o.mu = mu; });
  for (double mu : {0.01, 1.0})
    for (double rel : {0.05, 0.5})
      for (int64_t E : {1, 5, 20, 100})
        add("unlearn-GD",
            "GD mu=" + fmt(mu, 2) + ",lr=" + fmt(rel, 2) + ",E=" + std::to_string(E),
            [=](lr::IifOptions& o) {
              o.mu = mu;
              o.unlearning = lr::Unlearning::gradient_descent;
              o.unlearn_lr_rel = rel;
              o.unlearn_epochs = E;
            });
  for (int64_t K : {5, 10})
    for (double plr : {0.01, 0.1, 0.5})
      for (int64_t B : {int64_t{0}, int64_t{10}})
        add("path-SGD",
            "SGD K=" + std::to_string(K) + ",lr=" + fmt(plr, 2) + ",B=" + (B ? "10" : "N"),
            [=](lr::IifOptions& o) {
              o.K = K;
              o.mu = 1;
              o.path = lr::PathModels::sgd_epoch;
              o.path_lr = plr;
              o.path_batch = B;
            });
  add("curvature", "Fisher (eq. 31), mu=1",
      [=](lr::IifOptions& o) { o.mu = 1; o.curvature = lr::Curvature::fisher; });
  add("curvature", "Fisher, K=1, baseline f(theta*) (= IF-Fisher)", [=](lr::IifOptions& o) {
    o.K = 1;
    o.baseline_is_model = true;
    o.curvature = lr::Curvature::fisher;
  });
  for (double mu : {1.0, 5.0, 20.0})
    add("group", "group of all test points, mu=" + fmt(mu, 0),
        [=](lr::IifOptions& o) { o.mu = mu; }, true);

  const int64_t NV = static_cast<int64_t>(variants.size());
  // res[s][v][trial] for IIF variants; ref[s][k][trial] for IF, TracIn, DM (per point),
  // IF/TracIn/DM on the group, and n_test = 1 (IIF default, IF).
  enum Ref { kIF, kTracIn, kDM, kIFGroup, kTracInGroup, kDMGroup, kIIF1, kIF1, kNumRef };
  std::vector<std::vector<std::vector<double>>> res(
      S, std::vector<std::vector<double>>(NV, std::vector<double>(V, NAN)));
  std::vector<std::vector<std::vector<double>>> indef = res;
  std::vector<std::vector<std::vector<double>>> ref(
      S, std::vector<std::vector<double>>(kNumRef, std::vector<double>(V, NAN)));
  const std::vector<double> alphas = {0.2, 0.3, 0.5, 0.7};
  // alpha study: [s][alpha][method 0..3][trial]
  std::vector<std::vector<std::vector<std::vector<double>>>> by_alpha(
      S, std::vector<std::vector<std::vector<double>>>(
             alphas.size(), std::vector<std::vector<double>>(4, std::vector<double>(V, NAN))));

  parallel_trials(V, "investigation (validation trials x 6 settings)", c.progress, [&](int64_t v) {
    const uint64_t trial = kValidationTrialBase + static_cast<uint64_t>(v);
    for (int64_t s = 0; s < S; ++s) {
      lr::DataSpec spec = settings[s].spec;
      spec.n_test = c.n_test;
      const lr::Problem p = lr::make_problem(spec, c.seed, trial);
      const lr::Fit fit = lr::fit_least_squares(p);
      const int64_t n = p.n, T = p.n_test;
      lr::Protocol proto;
      proto.subsets = c.subsets;
      proto.dm_subsets = c.dm_subsets;
      proto.alpha = c.alpha;
      proto.seed = c.seed;
      const lr::TrialTruth truth = lr::trial_truth(p, proto, trial);
      const lr::Groups all = {[&] {
        std::vector<int64_t> g(T);
        for (int64_t j = 0; j < T; ++j) g[j] = j;
        return g;
      }()};
      const auto glosses = lr::group_losses(truth.losses, all);
      const auto ifs = lr::influence_function(p, fit);
      const auto trs = tracin_scores(c, p, fit);
      ref[s][kIF][v] = lds_of(ifs, n, T, truth.subsets, truth.losses);
      ref[s][kTracIn][v] = lds_of(trs, n, T, truth.subsets, truth.losses);
      ref[s][kDM][v] = lds_of(truth.datamodel.scores, n, T, truth.subsets, truth.losses);
      ref[s][kIFGroup][v] = lds_of(lr::group_scores(ifs, n, T, all), n, 1, truth.subsets, glosses);
      ref[s][kTracInGroup][v] = lds_of(lr::group_scores(trs, n, T, all), n, 1, truth.subsets, glosses);
      const lr::Datamodel dmg = lr::fit_datamodel(truth.dm_subsets,
                                                  lr::group_losses(truth.dm_losses, all), n);
      ref[s][kDMGroup][v] = lds_of(dmg.scores, n, 1, truth.subsets, glosses);
      ref[s][kIF1][v] = eval::lds(ifs, n, T, truth.subsets, truth.losses).per_test[0];
      ref[s][kIIF1][v] =
          eval::lds(lr::integrated_influence(p, fit, base).scores, n, T, truth.subsets, truth.losses)
              .per_test[0];
      for (int64_t k = 0; k < NV; ++k) {
        const Variant& var = variants[k];
        const lr::IifResult r = lr::integrated_influence(p, fit, var.o, var.aggregate ? all : lr::Groups{});
        res[s][k][v] = var.aggregate ? lds_of(r.scores, n, 1, truth.subsets, glosses)
                                     : lds_of(r.scores, n, T, truth.subsets, truth.losses);
        indef[s][k][v] = static_cast<double>(r.n_indefinite) / (var.aggregate ? 1.0 : double(T));
      }
      for (std::size_t a = 0; a < alphas.size(); ++a) {
        lr::Protocol pa = proto;
        pa.alpha = alphas[a];
        const lr::TrialTruth ta = lr::trial_truth(p, pa, trial);
        by_alpha[s][a][0][v] =
            lds_of(lr::integrated_influence(p, fit, base).scores, n, T, ta.subsets, ta.losses);
        by_alpha[s][a][1][v] = lds_of(ifs, n, T, ta.subsets, ta.losses);
        by_alpha[s][a][2][v] = lds_of(trs, n, T, ta.subsets, ta.losses);
        by_alpha[s][a][3][v] = lds_of(ta.datamodel.scores, n, T, ta.subsets, ta.losses);
      }
    }
  });

  auto mean = [](const std::vector<double>& x) {
    Stat st;
    st.v = x;
    return st.mean();
  };
  std::printf("\nInvestigation on %lld VALIDATION trials (trial indices 2^40 + 0..%lld, never the "
              "reported ones), %lld subsets, alpha %g unless stated.\n",
              (long long)V, (long long)V - 1, (long long)c.subsets, c.alpha);
  std::printf("Cells: IIF LDS, and in brackets IIF - IF on the same trials. 'fit' = RMS over the 6 "
              "settings of (our IIF-IF) - (paper IIF-IF); 'indef' = fraction of unlearning "
              "objectives that were indefinite (saddle / divergent GD).\n");
  std::printf("%-44s", "variant");
  for (int64_t s = 0; s < S; ++s) std::printf(" %-16s", settings[s].name.c_str());
  std::printf(" %-7s %-6s\n", "fit", "indef");
  auto row = [&](const std::string& name, const std::vector<double>& vals,
                 const std::vector<double>& margins, double indef_frac, const std::string& group) {
    std::printf("%-44s", name.c_str());
    double fit2 = 0;
    for (int64_t s = 0; s < S; ++s) {
      const std::string cell = fmt(vals[s]) + " (" + (margins[s] >= 0 ? "+" : "") + fmt(margins[s]) + ")";
      std::printf(" %-16s", cell.c_str());
      const double pm = settings[s].paper_iif - settings[s].paper_if;
      fit2 += (margins[s] - pm) * (margins[s] - pm) / S;
      json j = {{"experiment", "investigation"}, {"setting", settings[s].name},
                {"method", "IIF"}, {"variant", name}, {"study", group}, {"metric", "lds"},
                {"value", vals[s]}, {"minus_if", margins[s]}, {"paper", settings[s].paper_iif},
                {"paper_minus_if", pm}, {"val_trials", V}};
      out.write(j);
    }
    std::printf(" %-7s %-6s\n", fmt(std::sqrt(fit2)).c_str(), fmt(indef_frac, 2).c_str());
    return std::sqrt(fit2);
  };
  {
    std::vector<double> pv(S), pm(S), iv(S), im(S), tv(S), tm(S), dv(S), dm(S);
    for (int64_t s = 0; s < S; ++s) {
      pv[s] = settings[s].paper_iif;
      pm[s] = settings[s].paper_iif - settings[s].paper_if;
      iv[s] = mean(ref[s][kIF]);
      im[s] = 0;
      tv[s] = mean(ref[s][kTracIn]);
      tm[s] = tv[s] - iv[s];
      dv[s] = mean(ref[s][kDM]);
      dm[s] = dv[s] - iv[s];
    }
    std::printf("-- references\n");
    row("paper IIF (paper IIF - paper IF)", pv, pm, 0, "reference");
    row("IF", iv, im, 0, "reference");
    row("TracIn (vs IF)", tv, tm, 0, "reference");
    row("Datamodel ceiling (vs IF)", dv, dm, 0, "reference");
  }
  std::string last_group;
  std::vector<std::pair<double, std::string>> ranking;
  for (int64_t k = 0; k < NV; ++k) {
    const Variant& var = variants[k];
    if (var.group != last_group) {
      std::printf("-- %s\n", var.group == "K" ? "K (closed-form unlearning and path)"
                             : var.group == "mu" ? "mu = lambda c_train / c_test (K = default)"
                             : var.group == "unlearn-GD" ? "unlearning by E full-batch GD steps (lr relative to 1/(2 mu lambda_max(A)))"
                             : var.group == "path-SGD" ? "path models by one SGD epoch per step (eq. 16)"
                             : var.group == "curvature" ? "curvature: the Fisher of appendix E instead of the exact Hessian"
                                                        : "one test group = all test points, summed loss (IF/TracIn/DM summed alike)");
      last_group = var.group;
    }
    std::vector<double> vals(S), margins(S);
    double ind = 0;
    for (int64_t s = 0; s < S; ++s) {
      vals[s] = mean(res[s][k]);
      const double other = var.aggregate ? mean(ref[s][kIFGroup]) : mean(ref[s][kIF]);
      std::vector<double> diff(V);
      for (int64_t v = 0; v < V; ++v)
        diff[v] = res[s][k][v] - (var.aggregate ? ref[s][kIFGroup][v] : ref[s][kIF][v]);
      margins[s] = mean(diff);
      (void)other;
      ind += mean(indef[s][k]) / S;
    }
    ranking.push_back({row(var.name, vals, margins, ind, var.group), var.name});
  }
  {
    std::vector<double> iv(S), im(S), tv(S), tm(S), dv(S), dm(S);
    for (int64_t s = 0; s < S; ++s) {
      iv[s] = mean(ref[s][kIFGroup]);
      tv[s] = mean(ref[s][kTracInGroup]);
      tm[s] = tv[s] - iv[s];
      dv[s] = mean(ref[s][kDMGroup]);
      dm[s] = dv[s] - iv[s];
    }
    row("  group: IF", iv, im, 0, "group-reference");
    row("  group: TracIn (vs IF)", tv, tm, 0, "group-reference");
    row("  group: Datamodel ceiling (vs IF)", dv, dm, 0, "group-reference");
  }
  {
    std::printf("-- number of test points: LDS of test point 0 alone (n_test = 1) vs the mean over %lld\n",
                (long long)c.n_test);
    std::vector<double> v1(S), m1(S), i1(S), z(S, 0.0);
    for (int64_t s = 0; s < S; ++s) {
      std::vector<double> diff(V);
      for (int64_t v = 0; v < V; ++v) diff[v] = ref[s][kIIF1][v] - ref[s][kIF1][v];
      v1[s] = mean(ref[s][kIIF1]);
      m1[s] = mean(diff);
      i1[s] = mean(ref[s][kIF1]);
    }
    ranking.push_back({row("n_test=1: IIF (default options)", v1, m1, 0, "n_test"), "n_test=1"});
    row("n_test=1: IF", i1, z, 0, "n_test");
  }
  std::printf("-- subset fraction alpha (IIF default options; all methods re-evaluated)\n");
  for (std::size_t a = 0; a < alphas.size(); ++a) {
    const char* mnames[] = {"IIF", "IF", "TracIn", "Datamodel"};
    for (int mi = 0; mi < 4; ++mi) {
      std::vector<double> vals(S), margins(S);
      for (int64_t s = 0; s < S; ++s) {
        vals[s] = mean(by_alpha[s][a][mi]);
        std::vector<double> diff(V);
        for (int64_t v = 0; v < V; ++v) diff[v] = by_alpha[s][a][mi][v] - by_alpha[s][a][1][v];
        margins[s] = mean(diff);
      }
      const std::string name = "alpha=" + fmt(alphas[a], 1) + ": " + mnames[mi] + (mi ? " (vs IF)" : "");
      const double f = row(name, vals, margins, 0, "alpha");
      if (mi == 0) ranking.push_back({f, name});
    }
  }
  std::sort(ranking.begin(), ranking.end());
  std::printf("\nClosest to the paper's IIF-IF margins (RMS over the 6 settings; the paper's margins "
              "have RMS %s):\n",
              [&] {
                double r = 0;
                for (const auto& st : settings)
                  r += (st.paper_iif - st.paper_if) * (st.paper_iif - st.paper_if) / S;
                return fmt(std::sqrt(r));
              }().c_str());
  for (std::size_t k = 0; k < std::min<std::size_t>(5, ranking.size()); ++k)
    std::printf("  %-44s RMS %s\n", ranking[k].second.c_str(), fmt(ranking[k].first).c_str());
}

void usage() {
  std::printf(
      "linreg_tables: the paper's linear-regression Tables 1 and 4 (IIF, IF, TracIn, datamodel).\n"
      "  --trials N          reported trials (default 100)\n"
      "  --subsets M         LDS subsets per trial (default 5000)\n"
      "  --dm-subsets M      datamodel training subsets per trial (default = --subsets)\n"
      "  --alpha A           subset fraction (default 0.3)\n"
      "  --n-test T          test points per trial (default 10)\n"
      "  --K K               IIF path steps (default 10)\n"
      "  --mu MU             IIF unlearning weight mu = lambda c_train / c_test (default 1)\n"
      "  --lambda L          the paper's lambda on the mean MSE (mu = L / N); not with --mu\n"
      "  --unlearn closed|gd, --unlearn-epochs E (5), --unlearn-lr R (0.5, relative)\n"
      "  --path closed|sgd, --path-lr ETA (0.1), --path-batch B (0 = N)\n"
      "  --on-indefinite flag|throw   (default flag: counted and printed as 'saddles')\n"
      "  --tracin final|trajectory, --tracin-steps (100), --tracin-lr (0.1)\n"
      "  --laplace-scale b|std  Laplace(0, b = sigma) (default) or std = sigma\n"
      "  --seed S            (default 0)\n"
      "  --json FILE         JSON lines out\n"
      "  --quick             10 trials, 1000 subsets, 8 validation trials\n"
      "  --investigate       also run the validation study; --only-investigate skips the tables\n"
      "  --val-trials V      validation trials for the study (default 30)\n"
      "  --no-progress\n");
}

}  // namespace

int main(int argc, char** argv) {
  return iif::cli::run_program("linreg_tables", [&]() -> int {
    iif::cli::Args a(argc, argv, 1,
                     {"quick", "investigate", "only-investigate", "no-progress", "help"});
    if (a.flag("help")) {
      usage();
      return 0;
    }
    Config c;
    const bool quick = a.flag("quick");
    c.trials = a.integer("trials", quick ? 10 : 100, 1);
    c.subsets = a.integer("subsets", quick ? 1000 : 5000, 10);
    c.dm_subsets = a.integer("dm-subsets", c.subsets, 10);
    c.val_trials = a.integer("val-trials", quick ? 8 : 30, 1);
    c.alpha = a.real("alpha", 0.3, 0.0);
    c.n_test = a.integer("n-test", 10, 1);
    c.seed = static_cast<uint64_t>(a.integer("seed", 0, 0));
    c.iif.K = a.integer("K", 10, 1);
    if (a.has("mu") && a.has("lambda"))
      throw iif::cli::UsageError("give --mu or --lambda, not both (mu = lambda / N)");
    c.iif.mu = a.real("mu", 1.0, 0.0);
    if (a.has("lambda")) c.iif.mu = a.real("lambda", 1.0, 0.0) / 100.0;
    const std::string un = a.str("unlearn", "closed");
    if (un != "closed" && un != "gd") throw iif::cli::UsageError("--unlearn: closed or gd, got '" + un + "'");
    c.iif.unlearning = un == "gd" ? lr::Unlearning::gradient_descent : lr::Unlearning::closed_form;
    c.iif.unlearn_epochs = a.integer("unlearn-epochs", 5, 0);
    c.iif.unlearn_lr_rel = a.real("unlearn-lr", 0.5, 0.0);
    const std::string pa = a.str("path", "closed");
    if (pa != "closed" && pa != "sgd") throw iif::cli::UsageError("--path: closed or sgd, got '" + pa + "'");
    c.iif.path = pa == "sgd" ? lr::PathModels::sgd_epoch : lr::PathModels::closed_form;
    c.iif.path_lr = a.real("path-lr", 0.1, 0.0);
    c.iif.path_batch = a.integer("path-batch", 0, 0);
    const std::string oi = a.str("on-indefinite", "flag");
    if (oi != "flag" && oi != "throw") throw iif::cli::UsageError("--on-indefinite: flag or throw");
    c.iif.on_indefinite = oi == "flag" ? lr::OnIndefinite::flag : lr::OnIndefinite::throw_error;
    const std::string tr = a.str("tracin", "final");
    if (tr != "final" && tr != "trajectory") throw iif::cli::UsageError("--tracin: final or trajectory");
    c.tracin_trajectory = tr == "trajectory";
    c.traj.steps = a.integer("tracin-steps", 100, 1);
    c.traj.lr = a.real("tracin-lr", 0.1, 0.0);
    const std::string ls = a.str("laplace-scale", "b");
    if (ls != "b" && ls != "std") throw iif::cli::UsageError("--laplace-scale: b or std");
    c.laplace_scale = ls == "b" ? lr::LaplaceScale::b_is_sigma : lr::LaplaceScale::std_is_sigma;
    c.json_path = a.str("json", "");
    c.investigate = a.flag("investigate") || a.flag("only-investigate");
    c.tables = !a.flag("only-investigate");
    c.progress = !a.flag("no-progress");
    a.check_all_used();
    if (!(c.alpha > 0 && c.alpha <= 1)) throw iif::cli::UsageError("--alpha must be in (0, 1]");
    if (!(c.iif.mu > 0)) throw iif::cli::UsageError("--mu / --lambda must be > 0");

    JsonOut out(c.json_path);
    const auto t0 = std::chrono::steady_clock::now();
    std::fprintf(stderr, "linreg_tables: %d OpenMP threads\n", omp_get_max_threads());
    if (c.tables) run_tables(c, out);
    if (c.investigate) run_investigation(c, out);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("\nwall time %s\n", iif::format_duration(secs).c_str());
    return 0;
  });
}
