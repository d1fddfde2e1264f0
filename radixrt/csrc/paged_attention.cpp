// Paged attention on CPU over radixrt's slot-indexed KV pool.
//
// KV layout (per layer): k_buf, v_buf [num_slots, kv_heads, head_dim] float32; a request's
// tokens live at arbitrary slots kv_indices[b, :seq_lens[b]]. These kernels read the slots in
// place (no [B, L, KV, D] gather) and keep GQA grouped: the G = H / KV query heads that share a
// kv head are processed together, so each K/V row is read once per group.
//
//   radixrt_pa::decode(q [B,H,D], k_buf, v_buf, kv_indices [B,Lmax], seq_lens [B], scale)
//   radixrt_pa::isa() -> str   (which instruction-set variant the dispatcher picked)
//
// Build: plain -O3 -fopenmp (no -march=native, no -ffast-math: the cached .so must run on any
// x86-64 / aarch64 machine and keep IEEE NaN/inf semantics). The micro-kernels are written with
// GCC/Clang vector extensions (portable C++, no intrinsics). On x86-64 with GCC the kernel body
// is compiled twice, for the baseline ISA and under `#pragma GCC target("avx2,fma")`, and the
// variant is picked at run time with __builtin_cpu_supports. The body lives in the second half
// of this file, which includes itself once per variant.
//
// Parallelism: OpenMP (the process's libgomp is torch's), torch.get_num_threads() threads,
// dynamic schedule over work units; serial when called from inside a parallel region.
// Work units are whole requests (all kv heads: each slot's K/V row is read once, contiguously)
// when there are at least two per thread, else (request, kv head), split further into key chunks
// (flash-decoding, merged afterwards) when there are fewer than two of those per thread.
//
// Decode only: extend (prefill) attention runs on SDPA (radixrt/model/attention.py).
// Float32 only; the Python wrapper (radixrt/model/native.py) falls back to torch otherwise.

#ifndef RADIXRT_PA_BODY

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "team_size.h"

#define RADIXRT_PA_BODY 1

// The body's vector-extension helpers are static inline; their by-value vf8 signatures would
// otherwise warn about the AVX calling convention in the baseline variant.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define RADIXRT_PA_X86_DISPATCH 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace radixrt_pa { namespace isa_avx2 {
#include "paged_attention.cpp"  // this file (the body half below)
}}  // namespace radixrt_pa::isa_avx2
#pragma GCC pop_options
#endif

namespace radixrt_pa { namespace isa_base {
#include "paged_attention.cpp"  // this file (the body half below)
}}  // namespace radixrt_pa::isa_base

namespace radixrt_pa {

using DecodeUnitFn = void (*)(const float*, const float*, const float*, int64_t, const int64_t*,
                              int64_t, int, int, int, float, float*, float*, float*, float*);

struct Kernels {
  DecodeUnitFn decode_unit;
  const char* name;
};

// RADIXRT_NATIVE_ISA=baseline forces the portable variant (read once, at first use).
static Kernels pick_kernels() {
  const char* force = std::getenv("RADIXRT_NATIVE_ISA");
  const bool baseline_only = force != nullptr && std::string(force) == "baseline";
#ifdef RADIXRT_PA_X86_DISPATCH
  __builtin_cpu_init();
  if (!baseline_only && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return {isa_avx2::decode_unit, "avx2"};
  }
#endif
  (void)baseline_only;
  return {isa_base::decode_unit, "baseline"};
}

static const Kernels& kernels() {
  static const Kernels k = pick_kernels();
  return k;
}

// Below this many multiply-adds (keys x query heads x head_dim, summed) a call runs on one
// thread: waking the team costs more than it saves (same idea as at::parallel_for's grain).
static constexpr int64_t kSerialWork = int64_t{1} << 17;

static int num_threads_for(int64_t units, int64_t work = std::numeric_limits<int64_t>::max()) {
  return team_size(units, work < kSerialWork);
}

static void check_kv(const at::Tensor& q, const at::Tensor& k_buf, const at::Tensor& v_buf,
                     const at::Tensor& kv_indices, const at::Tensor& seq_lens) {
  TORCH_CHECK(q.device().is_cpu() && k_buf.device().is_cpu() && v_buf.device().is_cpu(),
              "radixrt_pa: CPU tensors expected");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k_buf.scalar_type() == at::kFloat &&
                  v_buf.scalar_type() == at::kFloat,
              "radixrt_pa: float32 q/k_buf/v_buf expected");
  TORCH_CHECK(q.dim() == 3, "radixrt_pa: q must be 3-d, got ", q.sizes());
  TORCH_CHECK(k_buf.dim() == 3 && v_buf.dim() == 3, "radixrt_pa: k_buf/v_buf must be [slots, KV, D]");
  TORCH_CHECK(k_buf.sizes() == v_buf.sizes(), "radixrt_pa: k_buf and v_buf shapes differ");
  TORCH_CHECK(k_buf.stride(0) == v_buf.stride(0), "radixrt_pa: k_buf and v_buf slot strides differ");
  const int64_t D = k_buf.size(2), KV = k_buf.size(1);
  TORCH_CHECK(k_buf.stride(2) == 1 && k_buf.stride(1) == D && v_buf.stride(2) == 1 &&
                  v_buf.stride(1) == D,
              "radixrt_pa: k_buf/v_buf must be contiguous within a slot");
  TORCH_CHECK(k_buf.stride(0) >= KV * D, "radixrt_pa: bad slot stride");
  TORCH_CHECK(q.size(2) == D, "radixrt_pa: head_dim mismatch q ", q.size(2), " vs kv ", D);
  TORCH_CHECK(KV > 0 && q.size(1) % KV == 0, "radixrt_pa: num_heads ", q.size(1),
              " not a multiple of kv_heads ", KV);
  TORCH_CHECK(kv_indices.device().is_cpu() && kv_indices.scalar_type() == at::kLong &&
                  kv_indices.dim() == 2,
              "radixrt_pa: kv_indices must be a 2-d int64 CPU tensor");
  TORCH_CHECK(seq_lens.device().is_cpu() && seq_lens.scalar_type() == at::kLong &&
                  seq_lens.dim() == 1 && seq_lens.size(0) == kv_indices.size(0),
              "radixrt_pa: seq_lens must be an int64 CPU tensor [B]");
}

// Every slot a request reads must lie in the pool (a bad index would read out of bounds).
static void check_slots(const int64_t* idx, int64_t ld, const int64_t* lens, int64_t B, int64_t Lmax,
                        int64_t num_slots) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = lens[b];
    TORCH_CHECK(n >= 0 && n <= Lmax, "radixrt_pa: seq_lens[", b, "]=", n, " outside [0, ", Lmax, "]");
    const int64_t* row = idx + b * ld;
    bool ok = true;
    for (int64_t j = 0; j < n; ++j) ok &= (row[j] >= 0) & (row[j] < num_slots);
    TORCH_CHECK(ok, "radixrt_pa: kv_indices row ", b, " has a slot outside [0, ", num_slots, ")");
  }
}

// Keys per decode chunk at least this many when a request's keys are split across threads.
static constexpr int64_t kMinChunk = 256;

at::Tensor decode(const at::Tensor& q_in, const at::Tensor& k_buf, const at::Tensor& v_buf,
                  const at::Tensor& kv_indices_in, const at::Tensor& seq_lens_in, double scale) {
  check_kv(q_in, k_buf, v_buf, kv_indices_in, seq_lens_in);
  const at::Tensor q = q_in.contiguous();
  const at::Tensor kv_indices = kv_indices_in.contiguous();
  const at::Tensor seq_lens = seq_lens_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t KV = k_buf.size(1), G = H / KV, Lmax = kv_indices.size(1);
  TORCH_CHECK(kv_indices.size(0) == B, "radixrt_pa: kv_indices rows ", kv_indices.size(0), " != B ", B);
  at::Tensor out = at::empty({B, H, D}, q.options());
  if (B == 0 || H == 0 || D == 0) return out;

  const int64_t* idx = kv_indices.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  check_slots(idx, Lmax, lens, B, Lmax, k_buf.size(0));
  const float* qp = q.data_ptr<float>();
  const float* kp = k_buf.data_ptr<float>();
  const float* vp = v_buf.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t ss = k_buf.stride(0);
  const float sc = static_cast<float>(scale);
  const DecodeUnitFn unit = kernels().decode_unit;
  int64_t max_len = 0, total_len = 0;
  for (int64_t b = 0; b < B; ++b) {
    max_len = std::max(max_len, lens[b]);
    total_len += lens[b];
  }
  const int64_t work = total_len * H * D;

  // Work units: with at least 2 requests per thread, one request with all its kv heads (NH =
  // KV), so each slot's K and V rows (KV * D floats) are read once, front to back, instead of
  // KV strided passes over them. Otherwise (request, kv head) pairs (NH = 1), and when there
  // are fewer of those than 2 per thread each request's keys are also split into C chunks
  // (flash-decoding) merged afterwards.
  const int nt_max = num_threads_for(std::numeric_limits<int>::max(), work);
  const int64_t NH = (nt_max == 1 || B >= 2 * nt_max) ? KV : 1;
  const int64_t R = NH * G;  // query heads per unit (adjacent in q: kv head h has h*G..h*G+G-1)
  const int64_t pairs = B * (KV / NH);
  int64_t C = 1;
  if (nt_max > 1 && pairs < 2 * nt_max)
    C = std::max<int64_t>(1, std::min((2 * nt_max + pairs - 1) / pairs, max_len / kMinChunk));
  const int64_t n_units = pairs * C;
  const int64_t max_chunk = (max_len + C - 1) / C;
  const int nt = num_threads_for(n_units, work);
  // Per unit: R rows of acc (D), then R maxima and R sums. With C == 1 acc is written straight
  // into a thread-local buffer and normalised into out.
  std::vector<float> partial(C > 1 ? static_cast<size_t>(n_units * R * (D + 2)) : 0);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    std::vector<float> scores(static_cast<size_t>(R * std::max<int64_t>(max_chunk, 1)));
    std::vector<float> local(C > 1 ? 0 : static_cast<size_t>(R * (D + 2)));
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < n_units; ++u) {
      const int64_t pair = u / C, c = u % C;
      const int64_t b = pair / (KV / NH), h = (pair % (KV / NH)) * NH;  // first kv head
      const int64_t chunk = (lens[b] + C - 1) / C;
      const int64_t j0 = std::min(lens[b], c * chunk), j1 = std::min(lens[b], j0 + chunk);
      const int64_t off = (b * H + h * G) * D;
      float* acc = C > 1 ? partial.data() + u * R * (D + 2) : local.data();
      float* m = acc + R * D;
      float* l = m + R;
      unit(qp + off, kp + h * D, vp + h * D, ss, idx + b * Lmax + j0, j1 - j0, static_cast<int>(NH),
           static_cast<int>(G), static_cast<int>(D), sc, scores.data(), acc, m, l);
      if (C == 1) {
        for (int64_t r = 0; r < R; ++r) {
          const float inv = l[r] == 0.0f ? 0.0f : 1.0f / l[r];  // l == 0 only for an empty request
          for (int64_t d = 0; d < D; ++d) op[off + r * D + d] = acc[r * D + d] * inv;
        }
      }
    }
  }
  if (C > 1) {  // only with NH == 1 (R == G)
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t b = pair / KV, h = pair % KV;
      float* o = op + (b * H + h * G) * D;
      for (int64_t g = 0; g < G; ++g) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t c = 0; c < C; ++c) {
          const float mc = partial[static_cast<size_t>((pair * C + c) * G * (D + 2) + G * D + g)];
          mx = mc > mx ? mc : mx;
        }
        float lsum = 0.0f;
        for (int64_t d = 0; d < D; ++d) o[g * D + d] = 0.0f;
        for (int64_t c = 0; c < C; ++c) {
          const float* base = partial.data() + (pair * C + c) * G * (D + 2);
          const float mc = base[G * D + g], lc = base[G * D + G + g];
          if (lc == 0.0f) continue;  // empty chunk (or one whose weights all underflowed)
          const float w = std::exp(mc - mx);
          lsum += lc * w;
          for (int64_t d = 0; d < D; ++d) o[g * D + d] += base[g * D + d] * w;
        }
        const float inv = lsum == 0.0f ? 0.0f : 1.0f / lsum;
        for (int64_t d = 0; d < D; ++d) o[g * D + d] *= inv;
      }
    }
  }
  return out;
}

std::string isa() { return kernels().name; }

}  // namespace radixrt_pa

TORCH_LIBRARY(radixrt_pa, m) {
  m.def("decode(Tensor q, Tensor k_buf, Tensor v_buf, Tensor kv_indices, Tensor seq_lens, float scale) -> Tensor");
  m.def("isa() -> str");
  m.impl("isa", &radixrt_pa::isa);
}

TORCH_LIBRARY_IMPL(radixrt_pa, CPU, m) {
  m.impl("decode", &radixrt_pa::decode);
}

#else  // RADIXRT_PA_BODY: the kernels, compiled once per ISA variant (see the top of the file)

// Micro-kernels use GCC/Clang vector extensions (8 x float): plain portable C++ that becomes
// AVX2/FMA code in the avx2 variant and pairs of SSE ops in the baseline one. Register blocking
// is explicit, which gcc's auto-vectorizer does not do on its own.
typedef float vf8 __attribute__((vector_size(32)));
static constexpr int W = 8;

static inline vf8 vload(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
static inline void vstore(float* p, vf8 v) { std::memcpy(p, &v, sizeof(v)); }
static inline vf8 vsplat(float x) { return vf8{x, x, x, x, x, x, x, x}; }
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef uint32_t vu8 __attribute__((vector_size(32)));
#if defined(__clang__)
#define RADIXRT_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define RADIXRT_SHUF(a, b, ...) __builtin_shuffle(a, b, vi8{__VA_ARGS__})
#endif
static inline float hsum(vf8 v) {
  return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}
// Lane-wise select without relying on vector ?: (mask lanes are all-ones or zero).
static inline vf8 vselect(vi8 mask, vf8 a, vf8 b) {
  return (vf8)((mask & (vi8)a) | (~mask & (vi8)b));
}
// r[j] = sum of the 8 lanes of v_j: a transpose-and-add tree (21 shuffles/adds for 8 sums).
static inline vf8 reduce8(vf8 v0, vf8 v1, vf8 v2, vf8 v3, vf8 v4, vf8 v5, vf8 v6, vf8 v7) {
  const vf8 w01 = RADIXRT_SHUF(v0, v1, 0, 8, 1, 9, 4, 12, 5, 13) + RADIXRT_SHUF(v0, v1, 2, 10, 3, 11, 6, 14, 7, 15);
  const vf8 w23 = RADIXRT_SHUF(v2, v3, 0, 8, 1, 9, 4, 12, 5, 13) + RADIXRT_SHUF(v2, v3, 2, 10, 3, 11, 6, 14, 7, 15);
  const vf8 w45 = RADIXRT_SHUF(v4, v5, 0, 8, 1, 9, 4, 12, 5, 13) + RADIXRT_SHUF(v4, v5, 2, 10, 3, 11, 6, 14, 7, 15);
  const vf8 w67 = RADIXRT_SHUF(v6, v7, 0, 8, 1, 9, 4, 12, 5, 13) + RADIXRT_SHUF(v6, v7, 2, 10, 3, 11, 6, 14, 7, 15);
  const vf8 x03 = RADIXRT_SHUF(w01, w23, 0, 1, 8, 9, 4, 5, 12, 13) + RADIXRT_SHUF(w01, w23, 2, 3, 10, 11, 6, 7, 14, 15);
  const vf8 x47 = RADIXRT_SHUF(w45, w67, 0, 1, 8, 9, 4, 5, 12, 13) + RADIXRT_SHUF(w45, w67, 2, 3, 10, 11, 6, 7, 14, 15);
  return RADIXRT_SHUF(x03, x47, 0, 1, 2, 3, 8, 9, 10, 11) + RADIXRT_SHUF(x03, x47, 4, 5, 6, 7, 12, 13, 14, 15);
}

// exp(x) for the softmax (used with x <= 0: scores minus their max).
#include "fast_exp.h"

// exp_approx on 8 lanes (same algorithm and constants).
static inline vf8 vexp(vf8 x) {
  const vf8 lo = vsplat(-87.3f), hi = vsplat(88.3f), shifter = vsplat(12582912.0f);
  const vi8 below = x < lo;
  vf8 xc = vselect(below, lo, x);  // NaN lanes compare false and pass through
  xc = vselect(xc > hi, hi, xc);
  const vf8 t = xc * 1.44269504088896341f + shifter;
  const vf8 n = t - shifter;
  vf8 r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf8 p = vsplat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const vu8 bits = ((vu8)t - 0x4B400000u + 127u) << 23;
  return vselect(below, vsplat(0.0f), p * (vf8)bits);
}

// s[0..n) = exp(s - m) in place; returns the sum.
static inline float exp_shift_sum(float* s, int64_t n, float m) {
  const vf8 mv = vsplat(m);
  vf8 acc = vsplat(0.0f);
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const vf8 p = vexp(vload(s + j) - mv);
    vstore(s + j, p);
    acc += p;
  }
  float sum = hsum(acc);
  for (; j < n; ++j) {
    const float p = exp_approx(s[j] - m);
    s[j] = p;
    sum += p;
  }
  return sum;
}

// max(m, s[0..n)); NaN entries are skipped (they make the result NaN through exp anyway).
static inline float max_of(const float* s, int64_t n, float m) {
  int64_t j = 0;
  if (n >= W) {
    vf8 mv = vsplat(m);
    for (; j + W <= n; j += W) {
      const vf8 v = vload(s + j);
      mv = vselect(v > mv, v, mv);
    }
    for (int l = 0; l < W; ++l) m = mv[l] > m ? mv[l] : m;
  }
  for (; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

// <a, b> over D floats.
static inline float dot(const float* a, const float* b, int D) {
  int d = 0;
  float s = 0.0f;
  if (D >= W) {
    vf8 acc0 = vload(a) * vload(b), acc1 = vsplat(0.0f);
    d = W;
    for (; d + 2 * W <= D; d += 2 * W) {
      acc1 += vload(a + d) * vload(b + d);
      acc0 += vload(a + d + W) * vload(b + d + W);
    }
    for (; d + W <= D; d += W) acc1 += vload(a + d) * vload(b + d);
    s = hsum(acc0 + acc1);
  }
  for (; d < D; ++d) s += a[d] * b[d];
  return s;
}

// o0 += sum_{j<n} p0[j] rows[j],  o1 += sum_{j<n} p1[j] rows[j]  (o1 may be null). Two
// output rows x 32 columns of accumulators in registers; each row loaded from rows[j] once
// serves both outputs.
static inline void pv2(float* o0, const float* p0, float* o1, const float* p1, int n,
                       const float* const* rows, int D) {
  int d0 = 0;
  for (; d0 + 4 * W <= D; d0 += 4 * W) {
    vf8 a0 = vload(o0 + d0), a1 = vload(o0 + d0 + W), a2 = vload(o0 + d0 + 2 * W),
        a3 = vload(o0 + d0 + 3 * W);
    if (o1) {
      vf8 b0 = vload(o1 + d0), b1 = vload(o1 + d0 + W), b2 = vload(o1 + d0 + 2 * W),
          b3 = vload(o1 + d0 + 3 * W);
      for (int j = 0; j < n; ++j) {
        const float* v = rows[j] + d0;
        const vf8 v0 = vload(v), v1 = vload(v + W), v2 = vload(v + 2 * W), v3 = vload(v + 3 * W);
        const vf8 x = vsplat(p0[j]), y = vsplat(p1[j]);
        a0 += x * v0; a1 += x * v1; a2 += x * v2; a3 += x * v3;
        b0 += y * v0; b1 += y * v1; b2 += y * v2; b3 += y * v3;
      }
      vstore(o1 + d0, b0); vstore(o1 + d0 + W, b1); vstore(o1 + d0 + 2 * W, b2); vstore(o1 + d0 + 3 * W, b3);
    } else {
      for (int j = 0; j < n; ++j) {
        const float* v = rows[j] + d0;
        const vf8 x = vsplat(p0[j]);
        a0 += x * vload(v); a1 += x * vload(v + W); a2 += x * vload(v + 2 * W); a3 += x * vload(v + 3 * W);
      }
    }
    vstore(o0 + d0, a0); vstore(o0 + d0 + W, a1); vstore(o0 + d0 + 2 * W, a2); vstore(o0 + d0 + 3 * W, a3);
  }
  for (; d0 + W <= D; d0 += W) {
    vf8 a = vload(o0 + d0);
    for (int j = 0; j < n; ++j) a += vsplat(p0[j]) * vload(rows[j] + d0);
    vstore(o0 + d0, a);
    if (o1) {
      vf8 b = vload(o1 + d0);
      for (int j = 0; j < n; ++j) b += vsplat(p1[j]) * vload(rows[j] + d0);
      vstore(o1 + d0, b);
    }
  }
  for (; d0 < D; ++d0) {
    float a = o0[d0];
    for (int j = 0; j < n; ++j) a += p0[j] * rows[j][d0];
    o0[d0] = a;
    if (o1) {
      float b = o1[d0];
      for (int j = 0; j < n; ++j) b += p1[j] * rows[j][d0];
      o1[d0] = b;
    }
  }
}

// o_g += P[g] . rows for G output rows (pairs share the V loads).
static inline void pv_group(float* o, int64_t ldo, const float* P, int64_t ldp, int G, int n,
                            const float* const* rows, int D) {
  int g = 0;
  for (; g + 2 <= G; g += 2)
    pv2(o + g * ldo, P + g * ldp, o + (g + 1) * ldo, P + (g + 1) * ldp, n, rows, D);
  if (g < G) pv2(o + g * ldo, P + g * ldp, nullptr, nullptr, n, rows, D);
}

static constexpr int kPvBlock = 32;
// Slots are scattered, so hardware stream prefetchers cannot follow them: the score pass
// prefetches K rows this many keys ahead (a multiple of W) and the V rows of the keys it scores,
// the value pass V rows one block ahead. The prefetches go to L2 (T1 hint): L1 has too few miss
// buffers for this many outstanding rows (at 32 requests x 48 keys x 30 layers, T0 -> T1 alone
// took a step's decode attention from ~10 to ~7.4 ms, with the V prefetch and whole-row units
// to ~5.5 ms; docs/benchmarks.md #13).
static constexpr int64_t kPrefetch = 16;

static inline void prefetch_row(const float* p, int D) {
  for (int d = 0; d < D; d += 16) __builtin_prefetch(p + d, 0, 2);
}

// Decode for one request's NH adjacent kv heads [h, h + NH) (optionally a chunk of its keys):
// R = NH * G queries (rows of q, contiguous, each D long; rows e*G..e*G+G-1 use kv head h + e)
// over the L slots idx[0..L). kb/vb point at kv head h of slot 0; slot s starts at kb + s * ss,
// kv head h + e at + e * D. scores: R * L floats of scratch.
// Output, unnormalised so that chunks can be merged: acc[r] = sum_j exp(s_rj - m_r) v_j (R rows
// of D), m[r] = max_j s_rj, l[r] = sum_j exp(s_rj - m_r). L == 0 gives acc = 0, m = -inf, l = 0.
void decode_unit(const float* q, const float* kb, const float* vb, int64_t ss, const int64_t* idx,
                 int64_t L, int NH, int G, int D, float scale, float* scores, float* acc,
                 float* m_out, float* l_out) {
  const int R = NH * G;
  for (int i = 0; i < R * D; ++i) acc[i] = 0.0f;
  if (L <= 0) {
    for (int g = 0; g < R; ++g) {
      m_out[g] = -std::numeric_limits<float>::infinity();
      l_out[g] = 0.0f;
    }
    return;
  }
  // Pass 1: scores[r, j] = scale * <q_r, k_j>, 8 keys at a time: 8 vector accumulators, one
  // transpose-add reduction. The 8 K rows stay in L1 across the G queries of the group; the NH
  // heads of a slot are read one after the other (one contiguous NH * D row).
  const vf8 scv = vsplat(scale);
  const int HD = NH * D;
  // The first kPrefetch K rows now (short requests would otherwise start every unit on misses);
  // V rows while their keys are scored, so that pass 3 finds them in cache.
  for (int64_t j = 0; j < std::min<int64_t>(L, kPrefetch); ++j) prefetch_row(kb + idx[j] * ss, HD);
  int64_t j0 = 0;
  if (D % W == 0) {
    for (; j0 + W <= L; j0 += W) {
      const float* kr0[W];
      for (int j = 0; j < W; ++j) kr0[j] = kb + idx[j0 + j] * ss;
      for (int j = 0; j < W && j0 + kPrefetch + j < L; ++j) prefetch_row(kb + idx[j0 + kPrefetch + j] * ss, HD);
      for (int j = 0; j < W; ++j) prefetch_row(vb + idx[j0 + j] * ss, HD);
      for (int g = 0; g < R; ++g) {
        const float* qg = q + g * D;
        const int e = g / G;
        const float* kr[W];
        for (int j = 0; j < W; ++j) kr[j] = kr0[j] + e * D;
        vf8 a0 = vsplat(0.0f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int d = 0; d < D; d += W) {
          const vf8 x = vload(qg + d);
          a0 += x * vload(kr[0] + d); a1 += x * vload(kr[1] + d);
          a2 += x * vload(kr[2] + d); a3 += x * vload(kr[3] + d);
          a4 += x * vload(kr[4] + d); a5 += x * vload(kr[5] + d);
          a6 += x * vload(kr[6] + d); a7 += x * vload(kr[7] + d);
        }
        vstore(scores + g * L + j0, reduce8(a0, a1, a2, a3, a4, a5, a6, a7) * scv);
      }
    }
  }
  for (; j0 < L; ++j0) {
    const float* kr = kb + idx[j0] * ss;
    for (int g = 0; g < R; ++g) scores[g * L + j0] = dot(q + g * D, kr + (g / G) * D, D) * scale;
  }
  // Pass 2: stable softmax numerators in place.
  for (int g = 0; g < R; ++g) {
    float* s = scores + g * L;
    const float m = max_of(s, L, -std::numeric_limits<float>::infinity());
    m_out[g] = m;
    l_out[g] = exp_shift_sum(s, L, m);
  }
  // Pass 3: acc_g = sum_j p[g, j] v_j in blocks of kPvBlock keys: each V row comes from memory
  // once per group, the accumulators stay in registers across the block.
  const float* vrows[kPvBlock];
  for (int64_t j0 = 0; j0 < L; j0 += kPvBlock) {
    const int n = static_cast<int>(std::min<int64_t>(kPvBlock, L - j0));
    // The next block's rows (all NH heads), one block of work ahead.
    const int64_t pf_end = std::min<int64_t>(L, j0 + 2 * kPvBlock);
    for (int64_t j = j0 + kPvBlock; j < pf_end; ++j) prefetch_row(vb + idx[j] * ss, HD);
    for (int e = 0; e < NH; ++e) {
      for (int j = 0; j < n; ++j) vrows[j] = vb + idx[j0 + j] * ss + e * D;
      pv_group(acc + e * G * D, D, scores + e * G * L + j0, L, G, n, vrows, D);
    }
  }
}

#endif  // RADIXRT_PA_BODY
