// Every op of the backend interface has a case that holds the CUDA backend to the CPU backend:
// the table below maps each op declared in engine/backend.h to the test file and TEST_CASE that
// exercises it. This test reads engine/backend.h and the named test files, and fails when an op
// is declared without an entry (a new op must come with its case) or an entry names a case that
// does not exist. (The cases themselves run in test_cuda_backend / test_cuda_attribution on the
// SIMT emulator, and natively where a GPU is present.)
#include <doctest/doctest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace {

std::string read(const std::string& rel) {
  std::ifstream f(std::string(IIF_SOURCE_DIR) + "/" + rel);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

struct Case {
  const char* file;
  const char* test_case;
};

// Memory and bookkeeping members, not numerical ops.
const std::set<std::string> kNotOps = {"device", "name", "allocate", "deallocate", "copy_to_host",
                                       "copy_from_host", "copy_on_device", "synchronize"};

const char* const kBackend = "tests/test_cuda_backend.cpp";
const char* const kAttribution = "tests/test_cuda_attribution.cpp";

const std::map<std::string, Case> kCases = {
    {"fill", {kBackend, "cuda backend: fill, axpby, mul, relu, relu_backward"}},
    {"cast", {kBackend, "cuda backend: registration, copies, casts and the caching pool"}},
    {"axpby", {kBackend, "cuda backend: fill, axpby, mul, relu, relu_backward"}},
    {"mul", {kBackend, "cuda backend: fill, axpby, mul, relu, relu_backward"}},
    {"relu", {kBackend, "cuda backend: fill, axpby, mul, relu, relu_backward"}},
    {"relu_backward", {kBackend, "cuda backend: fill, axpby, mul, relu, relu_backward"}},
    {"dropout_mask", {kBackend, "cuda backend: dropout masks equal the CPU's bit for bit (plain and batched)"}},
    {"dropout_mask_batched", {kBackend, "cuda backend: dropout masks equal the CPU's bit for bit (plain and batched)"}},
    {"gemm", {kBackend, "cuda backend: gemm and gemm_batched (all transposes, beta, k = 0, shared operands)"}},
    {"gemm_batched", {kBackend, "cuda backend: gemm and gemm_batched (all transposes, beta, k = 0, shared operands)"}},
    {"add_row_vector", {kBackend, "cuda backend: add_row_vector, gather_rows (plain and batched broadcast)"}},
    {"add_row_vector_batched", {kBackend, "cuda backend: add_row_vector, gather_rows (plain and batched broadcast)"}},
    {"gather_rows", {kBackend, "cuda backend: add_row_vector, gather_rows (plain and batched broadcast)"}},
    {"sum_rows", {kBackend, "cuda backend: sum_rows and sum_rows_batched, in every schedule order"}},
    {"sum_rows_batched", {kBackend, "cuda backend: sum_rows and sum_rows_batched, in every schedule order"}},
    {"sum", {kBackend, "cuda backend: sum and dot (float64 results), in every schedule order"}},
    {"dot", {kBackend, "cuda backend: sum and dot (float64 results), in every schedule order"}},
    {"argmax_rows", {kBackend, "cuda backend: argmax_rows (ties, NaN, -0), in every schedule order"}},
    {"syrk", {kBackend, "cuda backend: syrk (overwrite and accumulate, N = 0) is exactly symmetric"}},
    {"batched_cholesky_solve", {kBackend, "cuda backend: batched_cholesky_solve (float64 solves; errors name k)"}},
    {"softmax", {kBackend, "cuda backend: softmax, softmax_xent (loss + dlogits), softmax_xent_hvp, mse"}},
    {"softmax_xent", {kBackend, "cuda backend: softmax, softmax_xent (loss + dlogits), softmax_xent_hvp, mse"}},
    {"softmax_xent_hvp", {kBackend, "cuda backend: softmax, softmax_xent (loss + dlogits), softmax_xent_hvp, mse"}},
    {"mse", {kBackend, "cuda backend: softmax, softmax_xent (loss + dlogits), softmax_xent_hvp, mse"}},
    {"sgd_step", {kBackend, "cuda backend: fused sgd_step and adam_step over several steps"}},
    {"adam_step", {kBackend, "cuda backend: fused sgd_step and adam_step over several steps"}},
    {"im2col", {kBackend, "cuda backend: image ops (im2col, col2im, NCHW <-> rows, max-pool select/route, channel sum/affine)"}},
    {"col2im", {kBackend, "cuda backend: image ops (im2col, col2im, NCHW <-> rows, max-pool select/route, channel sum/affine)"}},
    {"nchw_to_rows", {kBackend, "cuda backend: image ops (im2col, col2im, NCHW <-> rows, max-pool select/route, channel sum/affine)"}},
    {"rows_to_nchw", {kBackend, "cuda backend: image ops (im2col, col2im, NCHW <-> rows, max-pool select/route, channel sum/affine)"}},
    {"maxpool_gather", {kBackend, "cuda backend: image ops (im2col, col2im, NCHW <-> rows, max-pool select/route, channel sum/affine)"}},
    {"maxpool_scatter", {kBackend, "cuda backend: image ops (im2col, col2im, NCHW <-> rows, max-pool select/route, channel sum/affine)"}},
    {"channel_sum", {kBackend, "cuda backend: image ops (im2col, col2im, NCHW <-> rows, max-pool select/route, channel sum/affine)"}},
    {"channel_affine", {kBackend, "cuda backend: image ops (im2col, col2im, NCHW <-> rows, max-pool select/route, channel sum/affine)"}},
    {"linear_project", {kAttribution, "linear_project"}},
    {"project_rows", {kAttribution, "project_rows"}},
};

}  // namespace

TEST_CASE("every backend op declared in engine/backend.h has a CUDA-vs-CPU case, and every listed case exists") {
  const std::string header = read("engine/backend.h");
  REQUIRE(!header.empty());
  std::set<std::string> ops;
  const std::regex decl(R"(virtual\s+[^;(){}]*?\b([a-z_0-9]+)\s*\()");
  for (auto it = std::sregex_iterator(header.begin(), header.end(), decl); it != std::sregex_iterator(); ++it) {
    const std::string name = (*it)[1];
    if (!kNotOps.count(name)) ops.insert(name);
  }
  CHECK(ops.size() >= 35);  // the parse found the interface
  for (const std::string& op : ops) {
    INFO("backend op '" << op << "' has no case in the table of tests/test_backend_ops.cpp");
    CHECK(kCases.count(op) == 1);
  }
  std::map<std::string, std::string> files;
  for (const auto& [op, c] : kCases) {
    INFO("table entry '" << op << "' is not an op of engine/backend.h");
    CHECK(ops.count(op) == 1);
    if (!files.count(c.file)) files[c.file] = read(c.file);
    INFO("op '" << op << "': " << c.file << " has no TEST_CASE mentioning \"" << c.test_case << "\"");
    const std::string& text = files[c.file];
    bool found = false;
    for (std::size_t at = text.find("TEST_CASE(\""); at != std::string::npos && !found; at = text.find("TEST_CASE(\"", at + 1)) {
      const std::size_t end = text.find("\")", at);
      found = text.substr(at, end - at).find(c.test_case) != std::string::npos;
    }
    CHECK(found);
  }
}
