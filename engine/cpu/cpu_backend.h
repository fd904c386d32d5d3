// The CPU backend (OpenBLAS + OpenMP): the reference implementation of engine/backend.h.
#pragma once

#include "engine/backend.h"

namespace iif {

class CpuBackend final : public Backend {
 public:
  Device device() const override;
  std::string name() const override;

  void* allocate(std::size_t bytes) override;
  void deallocate(void* ptr, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* dev_src, std::size_t bytes) override;
  void copy_from_host(void* dev_dst, const void* host_src, std::size_t bytes) override;
  void copy_on_device(void* dst, const void* src, std::size_t bytes) override;

  void fill(Tensor& x, double value) override;
  void cast(const Tensor& src, Tensor& dst) override;
  void axpby(double a, const Tensor& x, double b, Tensor& y) override;
  void mul(const Tensor& a, const Tensor& b, Tensor& out) override;
  void relu(const Tensor& x, Tensor& y) override;
  void relu_backward(const Tensor& x, const Tensor& dy, double beta, Tensor& dx) override;
  void dropout_mask(Tensor& mask, double p, uint64_t seed, uint64_t stream) override;

  void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& a, const Tensor& b, double beta,
            Tensor& c) override;
  void add_row_vector(const Tensor& v, Tensor& y) override;
  void sum_rows(const Tensor& x, double beta, Tensor& out) override;
  void syrk(double alpha, const Tensor& u, double beta, Tensor& c) override;
  void batched_cholesky_solve(const Tensor& a, const std::vector<double>& damping,
                              Tensor& b) override;

  void linear_project(const Tensor& a, const std::vector<Tensor>& d, int64_t positions, bool bias, int64_t row0,
                      const RandomProjection& r, const std::vector<Tensor>& y) override;
  void project_rows(const Tensor& g, int64_t row0, const RandomProjection& r, double beta,
                    Tensor& y) override;

  void gemm_batched(bool trans_a, bool trans_b, double alpha, const Tensor& a, const Tensor& b,
                    double beta, Tensor& c) override;
  void add_row_vector_batched(const Tensor& v, Tensor& y) override;
  void sum_rows_batched(const Tensor& x, double beta, Tensor& out) override;
  void dropout_mask_batched(Tensor& mask, double p, const std::vector<uint64_t>& seeds,
                            const std::vector<uint64_t>& streams) override;

  double sum(const Tensor& x) override;
  double dot(const Tensor& a, const Tensor& b) override;
  std::vector<int64_t> argmax_rows(const Tensor& x) override;

  void softmax_xent(const Tensor& logits, const Tensor& targets, Tensor& loss,
                    Tensor* dlogits) override;
  void softmax_xent_hvp(const Tensor& logits, const Tensor& targets, const Tensor& dir,
                        Tensor& out) override;
  void softmax(const Tensor& logits, Tensor& probs) override;
  void mse(const Tensor& pred, const Tensor& target, Tensor& loss, Tensor* dpred) override;

  void gather_rows(const Tensor& src, const std::vector<int64_t>& index, Tensor& dst) override;
  void im2col(const Tensor& x, const Window2d& w, Tensor& cols) override;
  void col2im(const Tensor& cols, const Window2d& w, double beta, Tensor& x) override;
  void nchw_to_rows(const Tensor& x, Tensor& rows) override;
  void rows_to_nchw(const Tensor& rows, Tensor& x) override;
  void maxpool_gather(const Tensor& x, const Tensor& g, const Window2d& w, Tensor& out) override;
  void maxpool_scatter(const Tensor& x, const Tensor& gy, const Window2d& w, double beta, Tensor& gx) override;
  void channel_sum(const Tensor& x, double beta, Tensor& out) override;
  void channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift, Tensor& y) override;

  void sgd_step(Tensor& param, const Tensor& grad, Tensor& velocity, const SgdParams& h,
                bool first_step) override;
  void adam_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamParams& h,
                 int64_t t) override;
};

CpuBackend& cpu_backend();

}  // namespace iif
