// The iif command-line program: train models, evaluate checkpoints, report the build.
// Each subcommand validates its options and prints errors that say what to change.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>

#include "apps/cli_args.h"
#include "apps/commands.h"
#include "apps/device.h"
#include "apps/setup.h"
#include "engine/backend.h"
#include "nn/checkpoint.h"
#include "nn/datasets.h"
#include "nn/models.h"
#include "nn/trainer.h"

namespace fs = std::filesystem;
using iif::cli::Args;
using iif::cli::UsageError;

namespace {

const char* kMainHelp = R"(iif: data attribution with Integrated Influence (IIF) and its baselines

usage: iif <command> [options]        iif <command> --help

commands:
  train   train a model on MNIST or CIFAR-10 and save a checkpoint (.safetensors)
  eval    report a checkpoint's accuracy on a dataset split
  info    print the backends and thread counts of this build
  attribute  scores S[i][j] (n_train x n_test, .npy) of a method; --self for self-influence
  lds     linear datamodeling score of a method against retrained subset models (JSON)
  mislabel   flip 10% of the labels, train, rank by self-influence, ROC AUC (JSON)

example (the paper's MNIST MLP, as `make demo` runs it):
  iif train --data mnist --n-train 5000 --n-test 1000 --out runs/mlp-mnist.safetensors
)";

const char* kTrainHelp = R"(iif train: train a model and save it as a safetensors checkpoint

data:
  --data NAME          mnist | cifar10                         (default mnist)
  --data-dir DIR       folder with the standard files: MNIST IDX (train-images-idx3-ubyte[.gz],
                       ...) or CIFAR-10 binary (data_batch_1.bin ..., test_batch.bin)
                                                               (default data/<NAME>, shipped)
  --n-train N          first N training images                 (default 5000)
  --n-test N           first N test images, held out, for the accuracy (default 1000)
model and recipe (defaults: the paper's, its Table 5: on mnist the MLP with SGD, on cifar10
ResNet-9 with Adam):
  --model SPEC         mlp (784-128-64-10, dropout 0.1) | mlp:784-256-10 | mlp:...,dropout=0.2
                       | resnet9 (the paper's CIFAR-10 ResNet-9) | resnet9:<8 channel counts>
                                          (default mlp on mnist, resnet9 on cifar10)
  --epochs N           (default 50; cifar10: 10)               --batch N (default 64)
  --optimizer NAME     sgd | adam         (default sgd; cifar10: adam)
  --lr X               (default 0.01; cifar10: 0.001)          --momentum X (default 0.9, sgd only)
  --weight-decay X     (default 0)        --seed N           (default 0)
output:
  --out PATH           checkpoint to write                     (default runs/<model>-<data>.safetensors)
  --metrics PATH       JSON metrics                            (default <out without .safetensors>.json)
  --resume             continue an interrupted run from <out>.state (written every epoch)
  --threads N          OpenMP/BLAS threads                     (default: all cores)
  --device NAME        cpu | cuda | cuda-emulated (iif_emulated only) (default: cuda when this
                       build has the CUDA backend and a GPU is present, else cpu)
  --quiet              no progress line
)";

const char* kAttributionHelp = R"(iif attribute | lds | mislabel: data attribution

Sign convention: S[i][j] = estimated change in test sample j's loss from including training
sample i. Positive = harmful (opponent), negative = helpful (proponent).

common options:
  --method NAME        iif | iif-grouped | if-fisher | if-cg | if-lissa | if-explicit | tracin |
                       trak | grad-dot | grad-cos (default iif)
  --data, --data-dir, --model, --n-train, --n-test, --test-offset, --epochs, --batch,
  --optimizer, --lr, --momentum, --seed      as for iif train (theta* is trained with these)
  --checkpoint PATH    use this theta* instead of training one (attribute, lds)
  --proj-dim P         random projection dimension (default 256)
  --projector KIND     rademacher | gaussian | identity (default rademacher)
  --proj-seed N        (default 0)            --damping X  relative to mean diagonal (default 1e-3)
  --device NAME        cpu | cuda | cuda-emulated (iif_emulated only); default cuda when built
                       in and a GPU is present, else cpu. Data, theta* and every model live there.
  --profile            print a per-stage wall-time table at the end (train epoch, featurize,
                       fisher, solve, fit, score; CUDA events on a GPU). The stages are also
                       NVTX ranges for Nsight Systems (docs/gpu.md).
IIF (paper eqs. 9-17):
  --K N (5)  --lambda X (0.5)  --unlearn-epochs N (5)  --unlearn-lr X (0.01)  --path-lr X (0.01)
  --no-unlearn-stop    run all unlearning epochs (default: stop once the test loss reaches
                       chance level, log C; the paper's objective is unbounded and diverges)
  --unlearn-stop X     stop at X times the chance loss instead (default 1)
  --group-size N       test samples sharing one unlearning and path (iif: 1, iif-grouped: 100)
  --group-by KIND      order: consecutive test samples | class: same predicted class (default order)
  --path-targets KIND  true-class (appendix E) | full (default true-class)
  --path-curvature C   fisher: the paper's Fisher on projected gradients (default) | hessian |
                       gauss-newton: the full matrix by CG at each path model (not the paper's;
                       --cg-iters products per test sample and step, --damping absolute, 0.01)
  --self-baseline-lr X per-sample baseline step for self-influence (default 0.01)
  --baseline DIR       raise: unlearn, raising the test loss (eq. 12, default; finds proponents)
                       lower: lower the test loss instead (paper 3.2's baseline for opponents)
IF with the Hessian (if-cg, if-lissa, if-explicit; --damping is then absolute):
  --cg-iters N (10)  --lissa-scale X (50)  --lissa-depth N (1000)  --lissa-batch N (64)
  --gauss-newton       use the Gauss-Newton matrix instead of the Hessian
TRAK: --trak-models N (10, each trained on a random half)   TracIn: --tracin-every N epochs (5)
attribute:  --out PATH (runs/scores-<method>.npy)  --self
lds:        --subsets M (100)  --alpha X (0.5)  --subset-seed N  --cache-dir DIR  --json PATH
            --scores FILE  evaluate a saved score matrix (iif attribute --out) instead of fitting
            ground truth is cached per settings under DIR and resumes after an interruption
mislabel:   --flip X (0.1)  --flip-seed N  --json PATH       (defaults --n-train 1000)
)";

const char* kEvalHelp = R"(iif eval: accuracy of a checkpoint

  --checkpoint PATH    the .safetensors file written by iif train (required)
  --data NAME          mnist | cifar10 (default mnist)   --data-dir DIR (default data/<NAME>)
  --split NAME         train | test (default test)       --n N  first N images (default: all)
  --model SPEC         model spec (default: the one recorded in the checkpoint)
  --device NAME        cpu | cuda | cuda-emulated (default: cuda if present, else cpu)
)";

void set_threads(const Args& a) {
  if (a.has("threads")) omp_set_num_threads(static_cast<int>(a.integer("threads", 1, 1)));
}

int cmd_train(const Args& a) {
  const iif::cli::Setup s = iif::cli::read_setup(a, 5000, 1000, 0);
  const std::string& data = s.data;
  const std::string& dir = s.dir;
  const std::string& model_spec = s.model_spec;
  iif::nn::TrainConfig cfg = s.recipe;
  const std::string model_tag = model_spec.substr(0, model_spec.find_first_of(":,"));
  const std::string out = a.str("out", "runs/" + model_tag + "-" + data + ".safetensors");
  std::string stem = out;
  if (stem.size() > 12 && stem.substr(stem.size() - 12) == ".safetensors") stem.resize(stem.size() - 12);
  const std::string metrics = a.str("metrics", stem + ".json");
  const bool resume = a.flag("resume");
  const iif::Device device = s.device;
  set_threads(a);
  a.check_all_used();

  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
  const std::string state = out + ".state";
  if (!resume && fs::exists(state)) fs::remove(state);
  cfg.resume_path = state;

  iif::data::Dataset tr = iif::cli::load(s, iif::data::Split::train, s.n_train);
  iif::data::Dataset te = iif::cli::load(s, iif::data::Split::test, s.n_test);
  tr.images = tr.images.to(device);
  te.images = te.images.to(device);
  iif::nn::Init init;
  init.seed = cfg.seed;
  init.device = device;
  auto model = iif::nn::make_model(model_spec, init);
  std::fprintf(stderr, "iif train: %s (%lld parameters) on %lld %s images from %s, %d epochs, %s lr %g\n",
               model->spec().c_str(), (long long)model->num_parameters(), (long long)tr.size(),
               data.c_str(), dir.c_str(), cfg.epochs, cfg.optimizer.c_str(), cfg.lr);
  const iif::nn::TrainResult r = iif::nn::train(*model, tr, cfg);
  if (r.resumed_from_epoch > 0)
    std::fprintf(stderr, "resumed from epoch %d of %s\n", r.resumed_from_epoch, state.c_str());
  // The checkpoint first: an evaluation that fails (memory, a bad test file) loses no training.
  iif::nn::save_checkpoint(out, *model,
                           {{"model", model->spec()}, {"data", data}, {"n_train", std::to_string(tr.size())},
                            {"epochs", std::to_string(cfg.epochs)}, {"seed", std::to_string(cfg.seed)},
                            {"optimizer", cfg.optimizer}, {"lr", std::to_string(cfg.lr)}});
  fs::remove(state);
  const double acc_test = te.size() ? iif::nn::accuracy(*model, te) : 0.0;
  const double acc_train = iif::nn::accuracy(*model, tr);
  nlohmann::json m = {{"command", "train"}, {"model", model->spec()}, {"parameters", model->num_parameters()},
                      {"data", data}, {"data_dir", dir}, {"n_train", tr.size()}, {"n_test", te.size()},
                      {"epochs", cfg.epochs}, {"batch", cfg.batch}, {"optimizer", cfg.optimizer},
                      {"lr", cfg.lr}, {"momentum", cfg.momentum}, {"weight_decay", cfg.weight_decay},
                      {"seed", cfg.seed}, {"train_accuracy", acc_train}, {"test_accuracy", acc_test},
                      {"final_train_loss", r.epoch_loss.empty() ? 0.0 : r.epoch_loss.back()},
                      {"train_seconds", r.seconds}, {"samples_per_second", r.samples_per_second},
                      {"threads", omp_get_max_threads()}, {"checkpoint", out}};
  std::ofstream(metrics) << m.dump(2) << "\n";
  std::printf("train accuracy %.4f  test accuracy %.4f (%lld held-out images)\n", acc_train, acc_test,
              (long long)te.size());
  std::printf("training took %.1f s (%.0f samples/s)\n", r.seconds, r.samples_per_second);
  std::printf("checkpoint: %s\nmetrics:    %s\n", out.c_str(), metrics.c_str());
  return 0;
}

int cmd_eval(const Args& a) {
  const std::string ckpt = a.str("checkpoint", "");
  const std::string data = a.str("data", "mnist");
  const std::string dir = a.str("data-dir", "data/" + data);
  const std::string split = a.str("split", "test");
  const int64_t n = a.integer("n", -1, 1);
  const std::string spec_opt = a.str("model", "");
  const iif::Device device = iif::cli::resolve_device(a.str("device", "auto"));
  set_threads(a);
  a.check_all_used();
  if (ckpt.empty()) throw UsageError("eval: --checkpoint PATH is required");
  if (split != "train" && split != "test") throw UsageError("--split: expected train or test, got '" + split + "'");
  const std::string spec =
      spec_opt.empty() ? iif::nn::checkpoint_model_spec(ckpt) : spec_opt;
  iif::nn::Init init;
  init.device = device;
  auto model = iif::nn::make_model(spec, init);
  iif::nn::load_checkpoint(ckpt, *model);
  iif::cli::Setup where;
  where.data = data;
  where.dir = dir;
  auto ds = iif::cli::load(where, split == "train" ? iif::data::Split::train : iif::data::Split::test, n);
  ds.images = ds.images.to(device);
  std::printf("%s: accuracy %.4f on %lld %s images\n", ckpt.c_str(), iif::nn::accuracy(*model, ds),
              (long long)ds.size(), split.c_str());
  return 0;
}

int cmd_info(const Args& a) {
  a.check_all_used();
  std::printf("iif %s\nbackends: %s\ndevices: %s\nOpenMP threads: %d\n", "0.1.0",
              iif::backend_for(iif::Device::cpu()).name().c_str(), iif::cli::device_summary().c_str(),
              omp_get_max_threads());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::fputs(kMainHelp, stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  iif::cli::set_device_resolver(iif::cli::cli_device);
  for (int i = 2; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      std::fputs(cmd == "train"  ? kTrainHelp
                 : cmd == "eval" ? kEvalHelp
                 : (cmd == "attribute" || cmd == "lds" || cmd == "mislabel") ? kAttributionHelp
                                 : kMainHelp,
                 stdout);
      return 0;
    }
  return iif::cli::run_program("iif " + cmd, [&]() -> int {
    if (cmd == "train") return cmd_train(Args(argc, argv, 2, {"resume", "quiet"}));
    if (cmd == "eval") return cmd_eval(Args(argc, argv, 2, {}));
    if (cmd == "info") return cmd_info(Args(argc, argv, 2, {}));
    if (cmd == "attribute") return iif::cli::cmd_attribute(Args(argc, argv, 2, {"self", "quiet", "gauss-newton", "no-unlearn-stop", "profile"}));
    if (cmd == "lds") return iif::cli::cmd_lds(Args(argc, argv, 2, {"quiet", "gauss-newton", "no-unlearn-stop", "profile"}));
    if (cmd == "mislabel") return iif::cli::cmd_mislabel(Args(argc, argv, 2, {"quiet", "gauss-newton", "no-unlearn-stop", "profile"}));
    std::fprintf(stderr, "iif: unknown command '%s'\n\n%s", cmd.c_str(), kMainHelp);
    return 2;
  });
}
