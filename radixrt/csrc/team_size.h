// How many OpenMP threads a native kernel call should use: one when the call is too small
// to pay for waking the team (`serial`, decided by the caller's own work threshold) or when
// already inside a parallel region, else torch's thread count capped by the work units.
// Included by paged_attention.cpp and fused_ops.cpp (after <ATen/Parallel.h> and <omp.h>).

#ifndef RADIXRT_TEAM_SIZE_H
#define RADIXRT_TEAM_SIZE_H

#include <algorithm>
#include <cstdint>

static inline int team_size(int64_t units, bool serial) {
  if (serial) return 1;
  int nt = at::get_num_threads();
#ifdef _OPENMP
  if (omp_in_parallel()) nt = 1;
#else
  nt = 1;
#endif
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, units)));
}

#endif  // RADIXRT_TEAM_SIZE_H
