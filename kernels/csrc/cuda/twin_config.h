// Kernel-shape choice of the CUDA twin: which of the three kernel shapes a [rows, K] call runs
// and with how many threads. Plain C++ (no CUDA, no torch): the launcher (gumbel_softmax_cuda.cu),
// the static cost model (bench/static.py --twin, through the ctypes library of
// tests/test_cuda_twin_rng.py's source twin_host_api.cpp) and the tests read this one function.
#pragma once

#include <stdint.h>

namespace fused_gumbel {
namespace twin {

// Rows of at most SMALL_K classes: one row per thread (SMALL_ROWS_PER_THREAD of them), K a template parameter.
constexpr int SMALL_K = 16;
constexpr int SMALL_THREADS = 128;
constexpr int SMALL_ROWS_PER_THREAD = 1;  // 2 measured no better in the static model (ptxas reloads the keys)
// Rows up to MAX_RESIDENT classes: TPR threads per row (a power of two, 2..256) each hold
// calls_per_thread(TPR) Philox calls (4 classes each) in registers: one load, one noise draw, one
// store. Eight calls (32 classes) a thread spread its fixed costs (addresses, reductions) thin;
// rows of at most 64 classes take four, so short rows pad less.
constexpr int MAX_RESIDENT = 8192;
constexpr int MAX_THREADS_PER_ROW = 256;
constexpr int RESIDENT_MIN_THREADS = 128;  // block size when several rows share a block
// Longer rows: one block of STREAM_THREADS per row, streamed in chunks of 4 * STREAM_CALLS *
// STREAM_THREADS classes; the chunk maxima live in shared memory (4 or 8 bytes per chunk).
constexpr int STREAM_THREADS = 512;
constexpr int STREAM_CALLS = 4;
constexpr int STREAM_CHUNK = 4 * STREAM_CALLS * STREAM_THREADS;
constexpr int STREAM_MAX_SHARED_BYTES = 48 * 1024;

enum Shape : int { SHAPE_SMALL = 0, SHAPE_RESIDENT = 1, SHAPE_STREAMED = 2 };

constexpr int calls_per_thread(int threads_per_row) { return threads_per_row <= 4 ? 4 : 8; }
constexpr int block_threads(int threads_per_row) {
  return threads_per_row < RESIDENT_MIN_THREADS ? RESIDENT_MIN_THREADS : threads_per_row;
}

struct Config {
  int shape;             // Shape
  int threads_per_row;   // SMALL: 1; RESIDENT: 2..256; STREAMED: STREAM_THREADS
  int calls_per_thread;  // Philox calls (4 classes each) a thread holds per chunk (SMALL: Q)
  int block;             // threads per block
  int64_t grid;          // blocks
  int64_t chunks;        // chunks per row (1 unless STREAMED)
  int64_t shared_bytes;  // dynamic shared memory per block (STREAMED: chunk maxima)
};

inline Config choose_config(int64_t rows, int64_t classes, int compute_bytes) {
  const int64_t calls = (classes + 3) / 4;
  Config cfg{};
  if (classes <= SMALL_K) {
    const int64_t rows_per_block = SMALL_THREADS * SMALL_ROWS_PER_THREAD;
    cfg = Config{SHAPE_SMALL, 1, static_cast<int>(calls), SMALL_THREADS, (rows + rows_per_block - 1) / rows_per_block, 1, 0};
    return cfg;
  }
  if (classes <= MAX_RESIDENT) {
    int tpr = 2;
    while (static_cast<int64_t>(tpr) * calls_per_thread(tpr) < calls) tpr *= 2;
    const int block = block_threads(tpr);
    const int rows_per_block = block / tpr;
    cfg = Config{SHAPE_RESIDENT, tpr, calls_per_thread(tpr), block, (rows + rows_per_block - 1) / rows_per_block, 1, 0};
    return cfg;
  }
  const int64_t chunks = (classes + STREAM_CHUNK - 1) / STREAM_CHUNK;
  cfg = Config{SHAPE_STREAMED, STREAM_THREADS, STREAM_CALLS, STREAM_THREADS, rows, chunks, chunks * compute_bytes};
  return cfg;
}

}  // namespace twin
}  // namespace fused_gumbel
