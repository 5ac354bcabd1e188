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
// Rows up to MAX_RESIDENT classes stay in registers: `threads` threads per row each hold `calls`
// Philox calls (4 classes each): one load, one noise draw, one store. RESIDENT_WIDTHS[w] is width
// w; each holds twice the classes of the one before (so a row pads to less than twice its length)
// and the wide ones give a thread 64 classes, which spreads its fixed costs (addresses, key
// schedule, reductions) thin, as Triton's 32 to 128 elements per thread do.
struct RowWidth {
  int threads, calls;
};
constexpr RowWidth RESIDENT_WIDTHS[] = {{2, 4}, {4, 4}, {4, 8}, {4, 16}, {8, 16}, {16, 16}, {32, 16}, {64, 16}, {128, 16}};
constexpr int RESIDENT_WIDTH_COUNT = sizeof(RESIDENT_WIDTHS) / sizeof(RESIDENT_WIDTHS[0]);
constexpr int MAX_RESIDENT = 4 * 128 * 16;  // the widest: 8192 classes
constexpr int RESIDENT_MIN_THREADS = 128;  // block size when several rows share a block
// Longer rows: one block of STREAM_THREADS per row, streamed in chunks of 4 * STREAM_CALLS *
// STREAM_THREADS classes; the chunk maxima live in shared memory (4 or 8 bytes per chunk).
constexpr int STREAM_THREADS = 512;
constexpr int STREAM_CALLS = 8;
constexpr int STREAM_CHUNK = 4 * STREAM_CALLS * STREAM_THREADS;
constexpr int STREAM_MAX_SHARED_BYTES = 48 * 1024;

enum Shape : int { SHAPE_SMALL = 0, SHAPE_RESIDENT = 1, SHAPE_STREAMED = 2 };

constexpr int block_threads(int threads_per_row) {
  return threads_per_row < RESIDENT_MIN_THREADS ? RESIDENT_MIN_THREADS : threads_per_row;
}

struct Config {
  int shape;             // Shape
  int threads_per_row;   // SMALL: 1; RESIDENT: 2..128; STREAMED: STREAM_THREADS
  int calls_per_thread;  // Philox calls (4 classes each) a thread holds per chunk (SMALL: Q)
  int block;             // threads per block
  int64_t grid;          // blocks
  int64_t chunks;        // chunks per row (1 unless STREAMED)
  int64_t shared_bytes;  // dynamic shared memory per block (STREAMED: chunk maxima)
  int width;             // RESIDENT: the index into RESIDENT_WIDTHS
};

inline Config choose_config(int64_t rows, int64_t classes, int compute_bytes) {
  const int64_t calls = (classes + 3) / 4;
  Config cfg{};
  if (classes <= SMALL_K) {
    const int64_t rows_per_block = SMALL_THREADS * SMALL_ROWS_PER_THREAD;
    cfg = Config{SHAPE_SMALL, 1, static_cast<int>(calls), SMALL_THREADS, (rows + rows_per_block - 1) / rows_per_block, 1, 0, 0};
    return cfg;
  }
  if (classes <= MAX_RESIDENT) {
    int w = 0;
    while (static_cast<int64_t>(RESIDENT_WIDTHS[w].threads) * RESIDENT_WIDTHS[w].calls < calls) ++w;
    const RowWidth width = RESIDENT_WIDTHS[w];
    const int block = block_threads(width.threads);
    const int rows_per_block = block / width.threads;
    cfg = Config{SHAPE_RESIDENT, width.threads, width.calls, block, (rows + rows_per_block - 1) / rows_per_block, 1, 0, w};
    return cfg;
  }
  const int64_t chunks = (classes + STREAM_CHUNK - 1) / STREAM_CHUNK;
  cfg = Config{SHAPE_STREAMED, STREAM_THREADS, STREAM_CALLS, STREAM_THREADS, rows, chunks, chunks * compute_bytes, 0};
  return cfg;
}

}  // namespace twin
}  // namespace fused_gumbel
