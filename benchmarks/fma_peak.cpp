// The CPU's float32 FMA peak, one thread per core: what a compute-bound product (the Engine's 32-stream step)
// could reach at best. BENCHMARKS.md, "Serving concurrent clients", cites it.
//
//     g++ -O2 -mavx512f -pthread benchmarks/fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak
//
// Twelve independent chains of AVX-512 FMAs per thread hide the FMA latency (4 cycles, 2 per cycle).
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

static float chains(long iterations) {
    __m512 sums[12];
    for (int i = 0; i < 12; i++) sums[i] = _mm512_set1_ps(1.0f + i * 1e-7f);
    const __m512 scale = _mm512_set1_ps(0.9999999f), shift = _mm512_set1_ps(1e-7f);
    for (long k = 0; k < iterations; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) sums[i] = _mm512_fmadd_ps(sums[i], scale, shift);
    }
    float total = 0;  // (used, so that the loop is not optimised away)
    for (int i = 0; i < 12; i++) total += _mm512_reduce_add_ps(sums[i]);
    return total;
}

int main() {
    const long iterations = 200000000;
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    for (int threads = 1; threads <= cores; threads++) {
        std::vector<float> totals(threads);
        std::vector<std::thread> running;
        const auto started = std::chrono::steady_clock::now();
        for (int t = 0; t < threads; t++) running.emplace_back([&, t] { totals[t] = chains(iterations); });
        for (auto &thread : running) thread.join();
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        std::printf("%d thread(s): %.0f GFLOP/s (checksum %g)\n", threads,
                    threads * iterations * 12.0 * 16 * 2 / seconds / 1e9, totals[0]);
    }
}
