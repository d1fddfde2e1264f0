// exp_approx(x): exp in a form gcc vectorizes (libm's expf is a scalar call). Cephes-style:
// x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, then scale by 2^n through the exponent
// bits. Max relative error ~2 ulp. exp(x) = 0 for x < -87.3 (so exp(-inf) = 0, ~1e-38 below
// that is flushed), saturates above 88.3, NaN stays NaN.
//
// No include guard on purpose: paged_attention.cpp includes it once per ISA namespace and
// fused_ops.cpp once more, each copy compiled for its own target. Needs <cstdint>, <cstring>.

static inline float exp_approx(float x) {
  const float lo = -87.3f, hi = 88.3f;
  float xc = x < lo ? lo : x;  // comparisons with NaN are false: NaN passes through
  xc = xc > hi ? hi : xc;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = xc * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  uint32_t ti;  // unsigned: wrap-around (NaN lanes) is defined behaviour
  std::memcpy(&ti, &t, sizeof(ti));
  const uint32_t bits = (ti - 0x4B400000u + 127u) << 23;  // 2^n, n in [-126, 127]
  float pow2n;
  std::memcpy(&pow2n, &bits, sizeof(pow2n));
  const float y = p * pow2n;
  return x < lo ? 0.0f : y;
}

