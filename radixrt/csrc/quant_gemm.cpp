// Dense layers on a GGUF file's own quantized blocks (Q4_0, Q4_1, Q8_0), CPU.
//
//   radixrt_qg::gemm(x [M,K] f32, qs u8, dm f16, N, bits, isa) -> y [M,N] f32
//   radixrt_qg::isa() -> str            the path `isa = 0` (auto) takes on this CPU
//   radixrt_qg::supported(isa) -> bool
//   radixrt_qg::decode_layer(h, x, w[10], meta[11], positions, cos, sin, k_buf, v_buf, loc,
//                            kv_indices, seq_lens, eps, scale) -> x_next
//       one whole decoder layer of a decode batch in one call (below).
//
// Weights (repacked at load by radixrt/model/gguf_weights.py; the same values as the file):
// rows are grouped 16 at a time (N padded to a multiple of 16 with zero rows), K in blocks of
// 32. Every weight is an unsigned integer u with w = d * u + m per (row, block):
//   Q4_1: u = the 4-bit value, d and m the block's own;
//   Q4_0: u = the 4-bit value, m = -8 d;
//   Q8_0: u = q + 128 (an 8-bit value stored with its top bit flipped), m = -128 d.
// (d and m are fp16 values; -8 d and -128 d are exact in fp16.)
//   qs, 4-bit: [G][nb][4][16][4] bytes. Byte (g, b, L, r, j) is byte 4L+j of the file's block
//       (row 16g+r, block b): low nibble = element 4L+j, high nibble = element 16+4L+j.
//   qs, 8-bit: [G][nb][8][16][4] bytes. Byte (g, b, s, r, j) = u of element 4s+j.
//   dm: [G][nb][2][16] fp16: the 16 rows' d, then their m.
// So one 64-byte load holds 4 consecutive weights of each of 16 rows: a VNNI dot product
// (u8 x s8, 4 products per int32 lane) yields 16 rows' partial sums at once, no horizontal
// sums anywhere.
//
// Activations are quantized per row and 32-block to int8 with their own scale sx = max|x|/127
// (q = round(x / sx); vectorized per path, the same bits on every path); with S = sum(q) over
// the block, a block's contribution is
//   sum_i (d u_i + m) sx q_i = d sx * sum_i(u_i q_i) + m sx S,
// the integer sum exact in int32. 8-bit blocks always have m = -128 d (Q8_0), so there the
// mins go into the integer instead: d sx * (sum_i(u_i q_i) - 128 S), one float step per block
// fewer (the stored m is not read). The float steps follow, so results match a float reference
// to the activations' rounding (~0.4% of a block's largest |x|).
//
// Work split: one OpenMP region per call. Its threads first quantize the rows of x (a decode
// batch's few rows are quantized before it starts), then each takes a contiguous range of row
// groups, walked in chunks whose weights fit in L2; within a chunk, a tile of up to 8 rows of
// x (in L1) meets every group of the chunk before the next tile, so each weight byte comes
// from memory once per call and from L2 once per row tile.
// Every output is computed by the same instructions whatever the thread count or batch.
//
// Paths: AVX-512 VNNI (vpdpbusd), AVX2 (vpmaddubsw + vpmaddwd; for 8-bit weights with the
// sign trick, since u8 x s8 pair sums of 8-bit values overflow int16) and scalar. One build
// runs on any x86-64: each path is compiled for its own target and picked at run time
// (`isa`: 0 auto, 1 scalar, 2 avx2, 3 avx512-vnni; RADIXRT_QGEMM_ISA=scalar|avx2|vnni
// forces auto's pick). Rows of x in tiles that reuse each weight load.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define RADIXRT_X86 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "team_size.h"

namespace radixrt_qg {

enum Isa : int64_t { kAuto = 0, kScalar = 1, kAvx2 = 2, kVnni = 3 };

static constexpr int kRows = 16;   // rows per group
static constexpr int kBlock = 32;  // weights per block

// One [M, K] activation, quantized per 32-block. Row-major for the scalar and AVX2 paths:
// q [M, K], d/ms/s [M, nb]. The VNNI path takes it in tiles of 8 rows (the rows of a tile that
// a dot product step needs sit side by side, at fixed offsets from one pointer): tile t = m / 8,
// row r = m % 8, block b: q dword j (elements 4j..4j+3) at ((t * nb + b) * 8 + j) * 8 + r
// dwords; d/ms/s at (t * nb + b) * 8 + r.
struct Act {
  const int8_t* q;
  const float* d;    // sx
  const float* ms;   // sx * sum(q)
  const int32_t* s;  // sum(q)
  int64_t K, nb;
};

struct Weights {
  const uint8_t* qs;
  const uint16_t* dm;
  int64_t nb;
  int bits;
  int64_t group_bytes() const { return nb * (bits == 4 ? 256 : 512); }
};

static inline float half_to_float(uint16_t h) { return static_cast<float>(c10::Half(h, c10::Half::from_bits())); }

// ---- activation quantization ------------------------------------------------------------------

// One row of K values (K a multiple of 32): q, and per block sx = max|x|/127, sum(q), sx*sum(q).
// The vector versions below compute the same bits (same float operations, exact max and sum).
static void quantize_row_scalar(const float* x, int64_t m, int64_t nb, int8_t* q_base, float* d_base,
                                float* ms_base, int32_t* s_base) {
  int8_t* q = q_base + m * nb * kBlock;
  float* d = d_base + m * nb;
  float* ms = ms_base + m * nb;
  int32_t* s = s_base + m * nb;
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kBlock;
    float amax = 0.0f;
    for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float sx = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int8_t* qb = q + b * kBlock;
    int32_t sum = 0;
    for (int i = 0; i < kBlock; ++i) {
      const int v = static_cast<int>(std::nearbyint(xb[i] * inv));
      qb[i] = static_cast<int8_t>(std::min(127, std::max(-127, v)));
      sum += qb[i];
    }
    d[b] = sx;
    s[b] = sum;
    ms[b] = sx * static_cast<float>(sum);
  }
}

// ---- scalar -----------------------------------------------------------------------------------

static void group_scalar(const Weights& w, const Act& a, int64_t g, int64_t m0, int64_t mb, float* y,
                         int64_t ldy, int64_t N) {
  const uint8_t* gq = w.qs + g * w.group_bytes();
  const uint16_t* gdm = w.dm + g * w.nb * 2 * kRows;
  for (int64_t mi = 0; mi < mb; ++mi) {
    const int64_t m = m0 + mi;
    float acc[kRows] = {0};
    for (int64_t b = 0; b < w.nb; ++b) {
      const int8_t* xb = a.q + m * a.K + b * kBlock;
      int32_t isum[kRows] = {0};
      if (w.bits == 4) {
        const uint8_t* blk = gq + b * 256;
        for (int L = 0; L < 4; ++L)
          for (int r = 0; r < kRows; ++r)
            for (int j = 0; j < 4; ++j) {
              const uint8_t v = blk[(L * kRows + r) * 4 + j];
              isum[r] += (v & 0x0F) * xb[4 * L + j] + (v >> 4) * xb[16 + 4 * L + j];
            }
      } else {
        const uint8_t* blk = gq + b * 512;
        for (int r = 0; r < kRows; ++r) isum[r] = -128 * a.s[m * a.nb + b];  // the mins: m = -128 d
        for (int st = 0; st < 8; ++st)
          for (int r = 0; r < kRows; ++r)
            for (int j = 0; j < 4; ++j) isum[r] += blk[(st * kRows + r) * 4 + j] * xb[4 * st + j];
      }
      const uint16_t* dmb = gdm + b * 2 * kRows;
      const float sx = a.d[m * a.nb + b], msx = a.ms[m * a.nb + b];
      if (w.bits == 4) {
        for (int r = 0; r < kRows; ++r)
          acc[r] += static_cast<float>(isum[r]) * (half_to_float(dmb[r]) * sx) + half_to_float(dmb[kRows + r]) * msx;
      } else {
        for (int r = 0; r < kRows; ++r) acc[r] += static_cast<float>(isum[r]) * (half_to_float(dmb[r]) * sx);
      }
    }
    const int64_t n0 = g * kRows, cnt = std::min<int64_t>(kRows, N - n0);
    std::memcpy(y + m * ldy + n0, acc, cnt * sizeof(float));
  }
}

#ifdef RADIXRT_X86

// ---- AVX-512 VNNI -----------------------------------------------------------------------------

#define RADIXRT_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")))

RADIXRT_VNNI_TARGET static void quantize_row_avx512(const float* x, int64_t m, int64_t nb, int8_t* q_base,
                                                    float* d_base, float* ms_base, int32_t* s_base) {
  const int64_t t0 = (m >> 3) * nb * 8 + (m & 7);  // (t * nb + b) * 8 + r at b = 0
  int32_t* q = reinterpret_cast<int32_t*>(q_base) + (m >> 3) * nb * 64 + (m & 7);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kBlock;
    const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
    // max_ps(a, b) returns b where a is NaN: NaNs are skipped, as the scalar std::max does
    const float amax = _mm512_reduce_max_ps(
        _mm512_max_ps(_mm512_abs_ps(x1), _mm512_max_ps(_mm512_abs_ps(x0), _mm512_setzero_ps())));
    const float sx = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m512 iv = _mm512_set1_ps(inv);
    // round to nearest even (the default rounding mode, as nearbyint), then clamp
    const __m512i q0 = _mm512_min_epi32(hi, _mm512_max_epi32(lo, _mm512_cvtps_epi32(_mm512_mul_ps(x0, iv))));
    const __m512i q1 = _mm512_min_epi32(hi, _mm512_max_epi32(lo, _mm512_cvtps_epi32(_mm512_mul_ps(x1, iv))));
    // 8 dwords of 4 int8 each, one every 8 dwords (the tile's other rows in between)
    const __m256i bytes = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm512_cvtepi32_epi8(q0)),
                                                  _mm512_cvtepi32_epi8(q1), 1);
    alignas(32) int32_t dw[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(dw), bytes);
    for (int j = 0; j < 8; ++j) q[b * 64 + 8 * j] = dw[j];
    const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    d_base[t0 + b * 8] = sx;
    s_base[t0 + b * 8] = sum;
    ms_base[t0 + b * 8] = sx * static_cast<float>(sum);
  }
}

template <int MB>
RADIXRT_VNNI_TARGET static void tile_vnni(const Weights& w, const Act& a, int64_t g, int64_t m0, float* y,
                                          int64_t ldy, int64_t N) {
  // m0 .. m0 + MB - 1 lie in one 8-row tile (the caller's tiles start at multiples of 8)
  const int64_t t0 = (m0 >> 3) * a.nb * 8 + (m0 & 7);
  const int32_t* xq = reinterpret_cast<const int32_t*>(a.q) + (m0 >> 3) * a.nb * 64 + (m0 & 7);
  const float* xd = a.d + t0;
  const float* xms = a.ms + t0;
  const int32_t* xs = a.s + t0;
  const uint8_t* gq = w.qs + g * w.group_bytes();
  const uint16_t* gdm = w.dm + g * w.nb * 2 * kRows;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[MB];
  for (int mi = 0; mi < MB; ++mi) acc[mi] = _mm512_setzero_ps();
  for (int64_t b = 0; b < w.nb; ++b) {
    const int32_t* xb = xq + b * 64;  // dword j of row mi: xb[8 j + mi]
    __m512i isum[MB];
    if (w.bits == 4) {
      for (int mi = 0; mi < MB; ++mi) isum[mi] = _mm512_setzero_si512();
      const uint8_t* blk = gq + b * 256;
      for (int L = 0; L < 4; ++L) {
        const __m512i v = _mm512_loadu_si512(blk + 64 * L);
        const __m512i lo = _mm512_and_si512(v, low);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        for (int mi = 0; mi < MB; ++mi) {
          isum[mi] = _mm512_dpbusd_epi32(isum[mi], lo, _mm512_set1_epi32(xb[8 * L + mi]));
          isum[mi] = _mm512_dpbusd_epi32(isum[mi], hi, _mm512_set1_epi32(xb[8 * (4 + L) + mi]));
        }
      }
    } else {  // 8-bit: start from the mins, -128 S (m = -128 d)
      for (int mi = 0; mi < MB; ++mi) isum[mi] = _mm512_set1_epi32(-128 * xs[b * 8 + mi]);
      const uint8_t* blk = gq + b * 512;
      for (int st = 0; st < 8; ++st) {
        const __m512i v = _mm512_loadu_si512(blk + 64 * st);
        for (int mi = 0; mi < MB; ++mi)
          isum[mi] = _mm512_dpbusd_epi32(isum[mi], v, _mm512_set1_epi32(xb[8 * st + mi]));
      }
    }
    const uint16_t* dmb = gdm + b * 2 * kRows;
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dmb)));
    if (w.bits == 4) {
      const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(dmb + kRows)));
      for (int mi = 0; mi < MB; ++mi) {
        acc[mi] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[mi]), _mm512_mul_ps(d, _mm512_set1_ps(xd[b * 8 + mi])),
                                  acc[mi]);
        acc[mi] = _mm512_fmadd_ps(mn, _mm512_set1_ps(xms[b * 8 + mi]), acc[mi]);
      }
    } else {
      for (int mi = 0; mi < MB; ++mi)
        acc[mi] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[mi]), _mm512_mul_ps(d, _mm512_set1_ps(xd[b * 8 + mi])),
                                  acc[mi]);
    }
  }
  const int64_t n0 = g * kRows, cnt = std::min<int64_t>(kRows, N - n0);
  const __mmask16 mask = cnt == kRows ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << cnt) - 1);
  for (int mi = 0; mi < MB; ++mi) _mm512_mask_storeu_ps(y + (m0 + mi) * ldy + n0, mask, acc[mi]);
}

RADIXRT_VNNI_TARGET static void group_vnni(const Weights& w, const Act& a, int64_t g, int64_t m0, int64_t mb,
                                           float* y, int64_t ldy, int64_t N) {
  int64_t m = m0;
  const int64_t end = m0 + mb;
  for (; m + 8 <= end; m += 8) tile_vnni<8>(w, a, g, m, y, ldy, N);
  if (m + 4 <= end) { tile_vnni<4>(w, a, g, m, y, ldy, N); m += 4; }
  if (m + 2 <= end) { tile_vnni<2>(w, a, g, m, y, ldy, N); m += 2; }
  if (m < end) tile_vnni<1>(w, a, g, m, y, ldy, N);
}

// ---- AVX2 -------------------------------------------------------------------------------------

#define RADIXRT_AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

RADIXRT_AVX2_TARGET static void quantize_row_avx2(const float* x, int64_t m, int64_t nb, int8_t* q_base,
                                                  float* d_base, float* ms_base, int32_t* s_base) {
  int8_t* q = q_base + m * nb * kBlock;
  float* d = d_base + m * nb;
  float* ms = ms_base + m * nb;
  int32_t* s = s_base + m * nb;
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kBlock;
    __m256 xv[4];
    __m256 mx = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      xv[i] = _mm256_loadu_ps(xb + 8 * i);
      mx = _mm256_max_ps(_mm256_and_ps(xv[i], absmask), mx);  // NaN lanes keep the running max
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    const float amax = _mm_cvtss_f32(m4);
    const float sx = amax / 127.0f;
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m256 iv = _mm256_set1_ps(inv);
    __m256i qi[4];
    for (int i = 0; i < 4; ++i)
      qi[i] = _mm256_min_epi32(hi, _mm256_max_epi32(lo, _mm256_cvtps_epi32(_mm256_mul_ps(xv[i], iv))));
    // int32 -> int8 (values already in [-127, 127]); the packs interleave 128-bit lanes, undone last
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kBlock), _mm256_permutevar8x32_epi32(p, order));
    const __m256i t = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
    __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
    const int32_t sum = _mm_cvtsi128_si32(t4);
    d[b] = sx;
    s[b] = sum;
    ms[b] = sx * static_cast<float>(sum);
  }
}

// 8 rows (one half of a group) at a time: a 32-byte half of each 64-byte chunk holds 4
// consecutive weights of 8 rows.
template <int MB>
RADIXRT_AVX2_TARGET static void tile_avx2(const Weights& w, const Act& a, int64_t g, int64_t m0, float* y,
                                          int64_t ldy, int64_t N) {
  const uint8_t* gq = w.qs + g * w.group_bytes();
  const uint16_t* gdm = w.dm + g * w.nb * 2 * kRows;
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  for (int half = 0; half < 2; ++half) {
    __m256 acc[MB];
    for (int mi = 0; mi < MB; ++mi) acc[mi] = _mm256_setzero_ps();
    for (int64_t b = 0; b < w.nb; ++b) {
      __m256i isum[MB];
      for (int mi = 0; mi < MB; ++mi) isum[mi] = _mm256_setzero_si256();
      const int8_t* xb0 = a.q + m0 * a.K + b * kBlock;
      if (w.bits == 4) {
        const uint8_t* blk = gq + b * 256 + 32 * half;
        for (int L = 0; L < 4; ++L) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * L));
          const __m256i lo = _mm256_and_si256(v, low);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
          for (int mi = 0; mi < MB; ++mi) {
            const int8_t* xb = xb0 + mi * a.K;
            int32_t x0, x1;
            std::memcpy(&x0, xb + 4 * L, 4);
            std::memcpy(&x1, xb + 16 + 4 * L, 4);
            // u <= 15, |x| <= 127: the int16 pair sums cannot saturate.
            const __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(x0));
            const __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(x1));
            isum[mi] = _mm256_add_epi32(isum[mi], _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones));
          }
        }
      } else {
        const uint8_t* blk = gq + b * 512 + 32 * half;
        for (int st = 0; st < 8; ++st) {
          // Back to signed (q = u - 128), then |q| x sign(x, q): pair sums <= 2 * 128 * 127.
          const __m256i sq = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * st)), flip);
          const __m256i aq = _mm256_abs_epi8(sq);
          for (int mi = 0; mi < MB; ++mi) {
            int32_t x0;
            std::memcpy(&x0, xb0 + mi * a.K + 4 * st, 4);
            const __m256i p = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(_mm256_set1_epi32(x0), sq));
            isum[mi] = _mm256_add_epi32(isum[mi], _mm256_madd_epi16(p, ones));
          }
        }
        // sum(q x) = sum(u x) - 128 sum(x): the same integer (mins included) the other paths compute.
      }
      const uint16_t* dmb = gdm + b * 2 * kRows + 8 * half;
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dmb)));
      if (w.bits == 4) {
        const __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(dmb + kRows)));
        for (int mi = 0; mi < MB; ++mi) {
          const int64_t k = (m0 + mi) * a.nb + b;
          acc[mi] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[mi]), _mm256_mul_ps(d, _mm256_set1_ps(a.d[k])), acc[mi]);
          acc[mi] = _mm256_fmadd_ps(mn, _mm256_set1_ps(a.ms[k]), acc[mi]);
        }
      } else {
        for (int mi = 0; mi < MB; ++mi) {
          const int64_t k = (m0 + mi) * a.nb + b;
          acc[mi] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[mi]), _mm256_mul_ps(d, _mm256_set1_ps(a.d[k])), acc[mi]);
        }
      }
    }
    const int64_t n0 = g * kRows + 8 * half;
    const int64_t cnt = std::max<int64_t>(0, std::min<int64_t>(8, N - n0));
    for (int mi = 0; mi < MB; ++mi) {
      float* dst = y + (m0 + mi) * ldy + n0;
      if (cnt == 8) {
        _mm256_storeu_ps(dst, acc[mi]);
      } else if (cnt > 0) {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, acc[mi]);
        std::memcpy(dst, tmp, cnt * sizeof(float));
      }
    }
  }
}

RADIXRT_AVX2_TARGET static void group_avx2(const Weights& w, const Act& a, int64_t g, int64_t m0, int64_t mb,
                                           float* y, int64_t ldy, int64_t N) {
  int64_t m = m0;
  const int64_t end = m0 + mb;
  for (; m + 4 <= end; m += 4) tile_avx2<4>(w, a, g, m, y, ldy, N);
  if (m + 2 <= end) { tile_avx2<2>(w, a, g, m, y, ldy, N); m += 2; }
  if (m < end) tile_avx2<1>(w, a, g, m, y, ldy, N);
}

#endif  // RADIXRT_X86

// ---- dispatch ---------------------------------------------------------------------------------

static bool cpu_has(Isa isa) {
  switch (isa) {
    case kScalar:
      return true;
#ifdef RADIXRT_X86
    case kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case kVnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
    default:
      return false;
  }
}

static Isa auto_isa() {
  static const Isa chosen = [] {
    const char* env = std::getenv("RADIXRT_QGEMM_ISA");
    if (env != nullptr && *env != '\0') {
      const std::string v(env);
      const Isa want = v == "scalar" ? kScalar : v == "avx2" ? kAvx2 : v == "vnni" ? kVnni : kAuto;
      TORCH_CHECK(want != kAuto, "RADIXRT_QGEMM_ISA: unknown path '", v, "' (scalar, avx2, vnni)");
      TORCH_CHECK(cpu_has(want), "RADIXRT_QGEMM_ISA=", v, ": this CPU lacks it");
      return want;
    }
    if (cpu_has(kVnni)) return kVnni;
    if (cpu_has(kAvx2)) return kAvx2;
    return kScalar;
  }();
  return chosen;
}

static const char* isa_name(Isa isa) {
  return isa == kVnni ? "avx512-vnni" : isa == kAvx2 ? "avx2" : "scalar";
}

std::string isa() { return isa_name(auto_isa()); }

bool supported(int64_t isa) {
  if (isa == kAuto) return true;
  return (isa == kScalar || isa == kAvx2 || isa == kVnni) && cpu_has(static_cast<Isa>(isa));
}

// Below this many weight bytes x rows a call stays on the calling thread: waking the team
// costs more than a small layer takes.
static constexpr int64_t kSerialWork = int64_t{1} << 17;
// Weight bytes per chunk of groups (a part of a core's L2) and rows of x per tile (int8 rows
// of a tile stay in L1 across the chunk's groups).
static constexpr int64_t kChunkBytes = int64_t{256} << 10;
static constexpr int64_t kTileRows = 8;
// From this many activations (M x K) on, the team quantizes them, each thread its rows.
static constexpr int64_t kTeamQuantize = int64_t{1} << 16;

using GroupFn = void (*)(const Weights&, const Act&, int64_t, int64_t, int64_t, float*, int64_t, int64_t);
using QuantizeFn = void (*)(const float*, int64_t, int64_t, int8_t*, float*, float*, int32_t*);

at::Tensor gemm(const at::Tensor& x_in, const at::Tensor& qs, const at::Tensor& dm, int64_t N, int64_t bits,
                int64_t isa_arg) {
  TORCH_CHECK(x_in.dim() == 2, "radixrt_qg.gemm: x must be 2-d, got ", x_in.sizes());
  TORCH_CHECK(x_in.device().is_cpu() && x_in.scalar_type() == at::kFloat && x_in.dim() == 2,
              "radixrt_qg.gemm: x must be a 2-d float32 CPU tensor, got ", x_in.sizes());
  TORCH_CHECK(bits == 4 || bits == 8, "radixrt_qg.gemm: bits must be 4 or 8, got ", bits);
  TORCH_CHECK(qs.scalar_type() == at::kByte && qs.is_contiguous() && dm.scalar_type() == at::kHalf &&
                  dm.is_contiguous(),
              "radixrt_qg.gemm: qs must be contiguous uint8 and dm contiguous float16");
  const at::Tensor x = x_in.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % kBlock == 0 && K > 0, "radixrt_qg.gemm: K = ", K, " is not a multiple of 32");
  TORCH_CHECK(N > 0, "radixrt_qg.gemm: N must be positive");
  const int64_t nb = K / kBlock, G = (N + kRows - 1) / kRows;
  const int64_t per_block = bits == 4 ? 256 : 512;
  TORCH_CHECK(qs.numel() == G * nb * per_block, "radixrt_qg.gemm: qs has ", qs.numel(), " bytes, expected ",
              G * nb * per_block, " for N=", N, " K=", K, " bits=", bits);
  TORCH_CHECK(dm.numel() == G * nb * 2 * kRows, "radixrt_qg.gemm: dm has ", dm.numel(), " values, expected ",
              G * nb * 2 * kRows);
  Isa path = isa_arg == kAuto ? auto_isa() : static_cast<Isa>(isa_arg);
  TORCH_CHECK(isa_arg == kAuto || supported(isa_arg), "radixrt_qg.gemm: path ", isa_arg,
              " is unknown or unsupported on this CPU");
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0) return y;

  const bool serial = G * nb * per_block * M < kSerialWork;
  // Activation scratch: thread-local to the caller, grown as needed (no allocation per call);
  // the team writes it, each thread its own rows.
  thread_local std::vector<int8_t> q_buf;
  thread_local std::vector<float> d_buf, ms_buf;
  thread_local std::vector<int32_t> s_buf;
  const int64_t Mp = (M + 7) / 8 * 8;  // the VNNI layout's last tile is whole
  if (static_cast<int64_t>(q_buf.size()) < Mp * K) q_buf.resize(Mp * K);
  if (static_cast<int64_t>(d_buf.size()) < Mp * nb) {
    d_buf.resize(Mp * nb);
    ms_buf.resize(Mp * nb);
    s_buf.resize(Mp * nb);
  }
  // (thread_local names would mean each team thread's own buffers: pass the caller's pointers)
  int8_t* qp = q_buf.data();
  float* dp = d_buf.data();
  float* msp = ms_buf.data();
  int32_t* sp = s_buf.data();
  const Act a{qp, dp, msp, sp, K, nb};
  const Weights w{qs.data_ptr<uint8_t>(), reinterpret_cast<const uint16_t*>(dm.data_ptr<at::Half>()), nb,
                  static_cast<int>(bits)};
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  GroupFn group = group_scalar;
  QuantizeFn quantize = quantize_row_scalar;
  switch (path) {
#ifdef RADIXRT_X86
    case kVnni:
      group = group_vnni;
      quantize = quantize_row_avx512;
      break;
    case kAvx2:
      group = group_avx2;
      quantize = quantize_row_avx2;
      break;
#endif
    default:
      break;
  }
  // Groups per chunk: the chunk's weights (and scales) stay in L2 while the row tiles pass.
  const int64_t chunk = std::max<int64_t>(1, kChunkBytes / (w.group_bytes() + nb * 2 * kRows * 2));
  const int nt = team_size(G, serial);
  // A few rows (decode) are quantized here, before the team starts: cheaper than a barrier.
  const bool quantize_first = nt == 1 || M * K < kTeamQuantize;
  if (quantize_first)
    for (int64_t m = 0; m < M; ++m) quantize(xp + m * K, m, nb, qp, dp, msp, sp);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int t = 0, T = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    T = omp_get_num_threads();
#endif
    if (!quantize_first) {
      for (int64_t m = M * t / T; m < M * (t + 1) / T; ++m) quantize(xp + m * K, m, nb, qp, dp, msp, sp);
#pragma omp barrier
    }
    const int64_t g0 = G * t / T, g1 = G * (t + 1) / T;
    for (int64_t gc = g0; gc < g1; gc += chunk) {
      const int64_t ge = std::min(g1, gc + chunk);
      for (int64_t m0 = 0; m0 < M; m0 += kTileRows) {
        const int64_t mb = std::min<int64_t>(kTileRows, M - m0);
        for (int64_t g = gc; g < ge; ++g) group(w, a, g, m0, mb, yp, N, N);
      }
    }
  }
  return y;
}

}  // namespace radixrt_qg

// The fused element-wise ops and the decode attention kernel, built into the same library.
namespace radixrt_ops {
at::Tensor add_rms_norm_(at::Tensor& h, const at::Tensor& delta_in, const at::Tensor& w_in, double eps);
at::Tensor silu_mul(const at::Tensor& gu_in);
at::Tensor rope_store(const at::Tensor& qkv_in, const at::Tensor& positions_in, const at::Tensor& cos,
                      const at::Tensor& sin, at::Tensor& k_buf, at::Tensor& v_buf, const at::Tensor& loc_in,
                      int64_t H, int64_t KV);
}  // namespace radixrt_ops
namespace radixrt_pa {
at::Tensor decode(const at::Tensor& q_in, const at::Tensor& k_buf, const at::Tensor& v_buf,
                  const at::Tensor& kv_indices_in, const at::Tensor& seq_lens_in, double scale);
}  // namespace radixrt_pa

namespace radixrt_qg {

// One decoder layer of a decode batch (every request one new token), the same steps as
// radixrt/model/llama.py's fused forward, without a trip through Python and the dispatcher
// between them:
//   qkv = x Wqkv; q = RoPE(q), K/V RoPE'd and stored at loc; o = paged decode attention;
//   x' = add_rms_norm_(h, o Wo, post_norm); h += (silu(g) * u)(x' Wgu) Wdown;
//   returns rms_norm(h, next_norm)
// w = [qkv_qs, qkv_dm, o_qs, o_dm, gu_qs, gu_dm, down_qs, down_dm, post_norm, next_norm],
// meta = [N_qkv, bits_qkv, N_o, bits_o, N_gu, bits_gu, N_down, bits_down, H, KV, isa].
at::Tensor decode_layer(at::Tensor& h, const at::Tensor& x, at::TensorList w, at::IntArrayRef meta,
                        const at::Tensor& positions, const at::Tensor& cos, const at::Tensor& sin,
                        at::Tensor& k_buf, at::Tensor& v_buf, const at::Tensor& loc,
                        const at::Tensor& kv_indices, const at::Tensor& seq_lens, double eps, double scale) {
  TORCH_CHECK(w.size() == 10 && meta.size() == 11, "radixrt_qg.decode_layer: w needs 10 tensors, meta 11 ints");
  const int64_t isa = meta[10], H = meta[8], KV = meta[9];
  const at::Tensor qkv = gemm(x, w[0], w[1], meta[0], meta[1], isa);
  const at::Tensor q = radixrt_ops::rope_store(qkv, positions, cos, sin, k_buf, v_buf, loc, H, KV);
  const at::Tensor o = radixrt_pa::decode(q, k_buf, v_buf, kv_indices, seq_lens, scale);
  const at::Tensor x2 = radixrt_ops::add_rms_norm_(h, gemm(o.view({o.size(0), -1}), w[2], w[3], meta[2], meta[3], isa),
                                                   w[8], eps);
  const at::Tensor act = radixrt_ops::silu_mul(gemm(x2, w[4], w[5], meta[4], meta[5], isa));
  return radixrt_ops::add_rms_norm_(h, gemm(act, w[6], w[7], meta[6], meta[7], isa), w[9], eps);
}

}  // namespace radixrt_qg

TORCH_LIBRARY(radixrt_qg, m) {
  m.def("gemm(Tensor x, Tensor qs, Tensor dm, int N, int bits, int isa=0) -> Tensor");
  m.def("isa() -> str");
  m.impl("isa", &radixrt_qg::isa);
  m.def("supported(int isa) -> bool");
  m.def("decode_layer(Tensor(a!) h, Tensor x, Tensor[] w, int[] meta, Tensor positions, Tensor cos, "
        "Tensor sin, Tensor(b!) k_buf, Tensor(c!) v_buf, Tensor loc, Tensor kv_indices, Tensor seq_lens, "
        "float eps, float scale) -> Tensor");
  m.impl("supported", &radixrt_qg::supported);
}

TORCH_LIBRARY_IMPL(radixrt_qg, CPU, m) {
  m.impl("gemm", &radixrt_qg::gemm);
  m.impl("decode_layer", &radixrt_qg::decode_layer);
}
