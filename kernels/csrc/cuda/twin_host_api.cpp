// Host-side C API over the CUDA twin's RNG and shape choice, for tests and the static cost model
// (loaded with ctypes; built with g++ -O2 -shared -fPIC, no CUDA needed). The functions run the
// very source the kernels run (twin_rng.cuh, twin_config.h), compiled for the host: the Philox
// words and the exact twin are checked bit for bit / to the spec bound against fused_gumbel.rng,
// and the fast twin's series and constants with log2f standing in for lg2.approx.
#include <stdint.h>

#include "twin_config.h"
#include "twin_rng.cuh"

using namespace fused_gumbel::twin;

extern "C" {

// out[4 i + w] = word w of the Philox call with counter counters[i] under (key, offset).
void fg_twin_philox_words(uint64_t key, uint64_t offset, const uint64_t* counters, int64_t n, uint32_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    const Words w = philox_words(key, offset, counters[i]);
    out[4 * i] = w.w0;
    out[4 * i + 1] = w.w1;
    out[4 * i + 2] = w.w2;
    out[4 * i + 3] = w.w3;
  }
}

void fg_twin_gumbel_exact_f32(const uint32_t* words, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gumbel_exact<float>(words[i]);
}

void fg_twin_gumbel_exact_f64(const uint32_t* words, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gumbel_exact<double>(words[i]);
}

void fg_twin_gumbel_fast(const uint32_t* words, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gumbel_fast(words[i]);
}

// (shape, threads_per_row, calls_per_thread, block, grid, chunks, shared_bytes, width) of choose_config.
void fg_twin_choose_config(int64_t rows, int64_t classes, int compute_bytes, int64_t* out) {
  const Config c = choose_config(rows, classes, compute_bytes);
  out[0] = c.shape;
  out[1] = c.threads_per_row;
  out[2] = c.calls_per_thread;
  out[3] = c.block;
  out[4] = c.grid;
  out[5] = c.chunks;
  out[6] = c.shared_bytes;
  out[7] = c.width;
}

int fg_twin_max_resident() { return MAX_RESIDENT; }
int fg_twin_small_k() { return SMALL_K; }
}
