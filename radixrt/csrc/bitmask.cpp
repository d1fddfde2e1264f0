// Apply packed token bitmasks to CPU logits in place: disallowed tokens get -inf.
//
// Layout (radixrt/fsm/bitmask.py, xgrammar's): bit i % 32 of word i / 32 is 1 when token i is
// allowed. A word of all ones (everything allowed: an unconstrained row, most of a string's
// content) is skipped and a word of zeros (most words of a constrained row) is one run of
// stores, so a row costs about one pass over the logits it masks.
//
// A plain C ABI (called with ctypes): no torch, no threads, no allocation.

#include <cstdint>
#include <limits>

namespace {

template <class T>
void mask_row(T* row, int64_t vocab, const int32_t* words, int64_t num_words, T neg_inf) {
  const int64_t covered = num_words * 32 < vocab ? num_words * 32 : vocab;
  for (int64_t w = 0; w * 32 < covered; ++w) {
    const uint32_t m = static_cast<uint32_t>(words[w]);
    if (m == 0xffffffffu) {
      continue;
    }
    T* out = row + w * 32;
    const int64_t n = covered - w * 32 < 32 ? covered - w * 32 : 32;
    if (m == 0) {
      for (int64_t k = 0; k < n; ++k) {
        out[k] = neg_inf;
      }
      continue;
    }
    for (int64_t k = 0; k < n; ++k) {
      if (!((m >> k) & 1u)) {
        out[k] = neg_inf;
      }
    }
  }
  for (int64_t i = covered; i < vocab; ++i) {  // ids past the mask are not allowed
    row[i] = neg_inf;
  }
}

}  // namespace

extern "C" {

// Rows `rows[j]` of float32 `logits` ([.., vocab], rows `row_stride` floats apart) take
// bitmask row j ([num_rows, num_words] int32, contiguous); `rows` null means row j itself.
void radixrt_apply_bitmask_f32(float* logits, int64_t row_stride, int64_t vocab,
                               const int32_t* bitmask, int64_t num_words, const int64_t* rows,
                               int64_t num_rows) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < num_rows; ++j) {
    const int64_t r = rows != nullptr ? rows[j] : j;
    mask_row(logits + r * row_stride, vocab, bitmask + j * num_words, num_words, neg_inf);
  }
}

}  // extern "C"
