// Fused per-layer element-wise ops for the CPU decoder (float32), one call instead of several
// torch ops each. At decode batch sizes these ops move a few KB, so what they cost is dispatch
// and waking the thread team, not arithmetic: fused, each runs on the calling thread unless the
// batch is large (prefill), then over rows with OpenMP.
//
//   radixrt_ops::rms_norm(x [T,H], w [H], eps) -> [T,H]
//   radixrt_ops::add_rms_norm_(h [T,H], delta [T,H], w [H], eps) -> [T,H]
//       h += delta (in place, the residual stream), returns rms_norm(h)
//   radixrt_ops::silu_mul(gate_up [T,2I]) -> [T,I]          silu(gate) * up
//   radixrt_ops::rope_store(qkv [T,(H+2KV)*D], positions [T], cos [P,D], sin [P,D],
//                           k_buf [S,KV,D], v_buf [S,KV,D], loc [T], H, KV) -> q [T,H,D]
//       rotate-half RoPE on q and k (cos/sin rows hold the half-table twice, as
//       radixrt.model.rope builds them), k and v written to their KV slots loc[t].
//
// Same arithmetic as the torch expressions they replace (radixrt/model/llama.py), summed in a
// different order: results agree to float32 rounding. Plain -O3 (no -ffast-math).

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "team_size.h"

namespace radixrt_ops {

// Below this many elements a call stays on the calling thread.
static constexpr int64_t kSerialElems = int64_t{1} << 16;

static int threads_for(int64_t rows, int64_t elems) { return team_size(rows, elems < kSerialElems); }

static void check_f32(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "radixrt_ops: ", name,
              " must be a float32 CPU tensor");
  TORCH_CHECK(t.dim() == dim, "radixrt_ops: ", name, " must be ", dim, "-d, got ", t.sizes());
}

static inline void norm_row(const float* x, const float* w, float* out, int64_t H, float eps) {
  double ss = 0.0;  // a serial float sum would drift from torch's tree-summed mean
  for (int64_t j = 0; j < H; ++j) ss += static_cast<double>(x[j]) * x[j];
  const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(H)) + eps);
  for (int64_t j = 0; j < H; ++j) out[j] = x[j] * inv * w[j];
}

at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& w_in, double eps) {
  check_f32(x_in, "x", 2);
  check_f32(w_in, "w", 1);
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t T = x.size(0), H = x.size(1);
  TORCH_CHECK(w.size(0) == H, "radixrt_ops: rms_norm weight size ", w.size(0), " != ", H);
  at::Tensor out = at::empty({T, H}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
  const int nt = threads_for(T, T * H);
#pragma omp parallel for num_threads(nt) if (nt > 1)
  for (int64_t t = 0; t < T; ++t) norm_row(xp + t * H, wp, op + t * H, H, e);
  return out;
}

at::Tensor add_rms_norm_(at::Tensor& h, const at::Tensor& delta_in, const at::Tensor& w_in, double eps) {
  check_f32(h, "h", 2);
  check_f32(delta_in, "delta", 2);
  check_f32(w_in, "w", 1);
  TORCH_CHECK(h.is_contiguous(), "radixrt_ops: add_rms_norm_ needs a contiguous h");
  TORCH_CHECK(h.sizes() == delta_in.sizes(), "radixrt_ops: h ", h.sizes(), " vs delta ", delta_in.sizes());
  const at::Tensor delta = delta_in.contiguous(), w = w_in.contiguous();
  const int64_t T = h.size(0), H = h.size(1);
  TORCH_CHECK(w.size(0) == H, "radixrt_ops: add_rms_norm_ weight size ", w.size(0), " != ", H);
  at::Tensor out = at::empty({T, H}, h.options());
  float* hp = h.data_ptr<float>();
  const float* dp = delta.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
  const int nt = threads_for(T, T * H);
#pragma omp parallel for num_threads(nt) if (nt > 1)
  for (int64_t t = 0; t < T; ++t) {
    float* row = hp + t * H;
    const float* d = dp + t * H;
    for (int64_t j = 0; j < H; ++j) row[j] += d[j];
    norm_row(row, wp, op + t * H, H, e);
  }
  return out;
}

// exp_approx: ~2 ulp, vectorizable; 0 below -87.3 (so the sigmoid of a very negative input
// is exactly 0), saturating above 88.3.
#include "fast_exp.h"

// One row of silu(g) * u, compiled for AVX-512, AVX2 and the baseline, picked at load time
// (without a vector target, gcc leaves this loop scalar: ~6 ns per element, 140 ms of a
// 512-token prefill of SmolLM2-135M).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static void silu_mul_row(const float* g, const float* u, float* o, int64_t I) {
  for (int64_t j = 0; j < I; ++j) o[j] = g[j] / (1.0f + exp_approx(-g[j])) * u[j];
}

at::Tensor silu_mul(const at::Tensor& gu_in) {
  check_f32(gu_in, "gate_up", 2);
  const at::Tensor gu = gu_in.contiguous();
  const int64_t T = gu.size(0), I2 = gu.size(1);
  TORCH_CHECK(I2 % 2 == 0, "radixrt_ops: silu_mul needs an even last dimension, got ", I2);
  const int64_t I = I2 / 2;
  at::Tensor out = at::empty({T, I}, gu.options());
  const float* gp = gu.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int nt = threads_for(T, T * I * 4);  // exp is the cost here
#pragma omp parallel for num_threads(nt) if (nt > 1)
  for (int64_t t = 0; t < T; ++t) {
    const float* g = gp + t * I2;
    silu_mul_row(g, g + I, op + t * I, I);
  }
  return out;
}

static inline void rope_row(const float* x, const float* c, const float* s, float* out, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < half; ++d) out[d] = x[d] * c[d] - x[d + half] * s[d];
  for (int64_t d = half; d < D; ++d) out[d] = x[d] * c[d] + x[d - half] * s[d];
}

at::Tensor rope_store(const at::Tensor& qkv_in, const at::Tensor& positions_in, const at::Tensor& cos,
                      const at::Tensor& sin, at::Tensor& k_buf, at::Tensor& v_buf,
                      const at::Tensor& loc_in, int64_t H, int64_t KV) {
  check_f32(qkv_in, "qkv", 2);
  check_f32(cos, "cos", 2);
  check_f32(sin, "sin", 2);
  check_f32(k_buf, "k_buf", 3);
  check_f32(v_buf, "v_buf", 3);
  TORCH_CHECK(positions_in.scalar_type() == at::kLong && loc_in.scalar_type() == at::kLong &&
                  positions_in.dim() == 1 && loc_in.dim() == 1,
              "radixrt_ops: positions and loc must be 1-d int64");
  const at::Tensor qkv = qkv_in.contiguous(), positions = positions_in.contiguous(),
                   loc = loc_in.contiguous();
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.sizes() == sin.sizes(),
              "radixrt_ops: cos/sin must be contiguous tables of one shape");
  const int64_t T = qkv.size(0), D = k_buf.size(2), S = k_buf.size(0), P = cos.size(0);
  TORCH_CHECK(H > 0 && KV > 0 && D % 2 == 0 && qkv.size(1) == (H + 2 * KV) * D,
              "radixrt_ops: qkv width ", qkv.size(1), " != (H + 2 KV) * D for H=", H, " KV=", KV, " D=", D);
  TORCH_CHECK(k_buf.size(1) == KV && v_buf.sizes() == k_buf.sizes() && cos.size(1) == D,
              "radixrt_ops: k_buf/v_buf/cos shapes do not match KV=", KV, " D=", D);
  TORCH_CHECK(k_buf.stride(2) == 1 && k_buf.stride(1) == D && v_buf.stride(2) == 1 && v_buf.stride(1) == D,
              "radixrt_ops: k_buf/v_buf must be contiguous within a slot");
  TORCH_CHECK(positions.size(0) == T && loc.size(0) == T, "radixrt_ops: positions/loc must have T rows");
  const int64_t* pos = positions.data_ptr<int64_t>();
  const int64_t* lp = loc.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(pos[t] >= 0 && pos[t] < P, "radixrt_ops: position ", pos[t], " outside [0, ", P, ")");
    TORCH_CHECK(lp[t] >= 0 && lp[t] < S, "radixrt_ops: slot ", lp[t], " outside [0, ", S, ")");
  }
  at::Tensor q = at::empty({T, H, D}, qkv.options());
  const float* xp = qkv.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* qp = q.data_ptr<float>();
  float* kp = k_buf.data_ptr<float>();
  float* vp = v_buf.data_ptr<float>();
  const int64_t ks = k_buf.stride(0), vs = v_buf.stride(0), W = (H + 2 * KV) * D;
  const int nt = threads_for(T, T * W);
#pragma omp parallel for num_threads(nt) if (nt > 1)
  for (int64_t t = 0; t < T; ++t) {
    const float* x = xp + t * W;
    const float* c = cp + pos[t] * D;
    const float* s = sp + pos[t] * D;
    for (int64_t h = 0; h < H; ++h) rope_row(x + h * D, c, s, qp + (t * H + h) * D, D);
    float* kd = kp + lp[t] * ks;
    for (int64_t h = 0; h < KV; ++h) rope_row(x + (H + h) * D, c, s, kd + h * D, D);
    std::copy(x + (H + KV) * D, x + W, vp + lp[t] * vs);
  }
  return q;
}

}  // namespace radixrt_ops

TORCH_LIBRARY(radixrt_ops, m) {
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor");
  m.def("add_rms_norm_(Tensor(a!) h, Tensor delta, Tensor w, float eps) -> Tensor");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("rope_store(Tensor qkv, Tensor positions, Tensor cos, Tensor sin, Tensor(a!) k_buf, "
        "Tensor(b!) v_buf, Tensor loc, int H, int KV) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixrt_ops, CPU, m) {
  m.impl("rms_norm", &radixrt_ops::rms_norm);
  m.impl("add_rms_norm_", &radixrt_ops::add_rms_norm_);
  m.impl("silu_mul", &radixrt_ops::silu_mul);
  m.impl("rope_store", &radixrt_ops::rope_store);
}
