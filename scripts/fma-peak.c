/* The CPU's FP32 FMA peak, measured: 12 independent chains of fused multiply-adds per thread
 * (enough to cover the FMA latency on two pipes), on 512-bit (AVX-512F) and 256-bit (AVX2)
 * registers, on one thread and on every core. Nominal clocks mislead (this EPYC reports 2.6 GHz
 * and runs near 3.6); the benchmarks quote shares of this figure.
 *
 *   gcc -O3 -march=native -fopenmp scripts/fma-peak.c -o target/fma-peak && target/fma-peak
 *
 * -O3 keeps the accumulators in registers (at -O2 gcc measured store forwarding instead). */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 12
#define ITERS 200000000L

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#ifdef __AVX512F__
static float run512(long iters) {
    __m512 acc[CHAINS];
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < iters; n++)
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    float s = 0;
    for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(acc[i]);
    return s;
}
#endif

static float run256(long iters) {
    __m256 acc[CHAINS];
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_set1_ps((float)i);
    for (long n = 0; n < iters; n++)
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], a, b);
    float s = 0, out[8];
    for (int i = 0; i < CHAINS; i++) {
        _mm256_storeu_ps(out, acc[i]);
        for (int j = 0; j < 8; j++) s += out[j];
    }
    return s;
}

/* GFLOP/s of `threads` threads each running `f` (2 FLOP per lane per FMA). */
static double measure(float (*f)(long), int lanes, int threads) {
    volatile float sink = 0;
    long iters = ITERS / lanes * 4;
    double t0 = now();
#pragma omp parallel num_threads(threads)
    { float s = f(iters); sink += s; }
    double t = now() - t0;
    return 2.0 * CHAINS * lanes * (double)iters * threads / t / 1e9;
}

int main(void) {
    int cores = omp_get_num_procs();
#ifdef __AVX512F__
    printf("AVX-512 FMA: %.0f GFLOP/s on 1 thread, %.0f on %d\n", measure(run512, 16, 1),
           measure(run512, 16, cores), cores);
#endif
    printf("AVX2 FMA: %.0f GFLOP/s on 1 thread, %.0f on %d\n", measure(run256, 8, 1),
           measure(run256, 8, cores), cores);
    return 0;
}
