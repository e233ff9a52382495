// Peak AVX-512 VNNI throughput: VPDPBUSD (64 int8 multiply-adds each) on 16 independent
// accumulators per thread, nothing else. Prefill is bound by this instruction, so
// `bench/compare.sh` divides it by the dot products a token needs for a prefill ceiling.
//   gcc -O2 -pthread -o vnni_peak bench/vnni_peak.c && ./vnni_peak THREADS
// Prints billions of VPDPBUSD per second, all threads together (0 without AVX-512 VNNI).
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 16
static const long ITERS = 100000000; // per thread, in units of CHAINS instructions / CHAINS

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void *work(void *arg) {
    long cpu = (long)arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set); // best effort
    // Named accumulators (an array would live on the stack and bind the loop to
    // store-to-load latency).
    __m512i c0 = _mm512_set1_epi32(0), c1 = _mm512_set1_epi32(1), c2 = _mm512_set1_epi32(2), c3 = _mm512_set1_epi32(3), c4 = _mm512_set1_epi32(4), c5 = _mm512_set1_epi32(5), c6 = _mm512_set1_epi32(6), c7 = _mm512_set1_epi32(7), c8 = _mm512_set1_epi32(8), c9 = _mm512_set1_epi32(9), c10 = _mm512_set1_epi32(10), c11 = _mm512_set1_epi32(11), c12 = _mm512_set1_epi32(12), c13 = _mm512_set1_epi32(13), c14 = _mm512_set1_epi32(14), c15 = _mm512_set1_epi32(15);
    __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2);
    for (long n = 0; n < ITERS / CHAINS; n++) {
        c0 = _mm512_dpbusd_epi32(c0, a, b); c1 = _mm512_dpbusd_epi32(c1, a, b); c2 = _mm512_dpbusd_epi32(c2, a, b); c3 = _mm512_dpbusd_epi32(c3, a, b); c4 = _mm512_dpbusd_epi32(c4, a, b); c5 = _mm512_dpbusd_epi32(c5, a, b); c6 = _mm512_dpbusd_epi32(c6, a, b); c7 = _mm512_dpbusd_epi32(c7, a, b); c8 = _mm512_dpbusd_epi32(c8, a, b); c9 = _mm512_dpbusd_epi32(c9, a, b); c10 = _mm512_dpbusd_epi32(c10, a, b); c11 = _mm512_dpbusd_epi32(c11, a, b); c12 = _mm512_dpbusd_epi32(c12, a, b); c13 = _mm512_dpbusd_epi32(c13, a, b); c14 = _mm512_dpbusd_epi32(c14, a, b); c15 = _mm512_dpbusd_epi32(c15, a, b);
        __asm__ volatile("" : "+v"(a)); // keep the loop from being folded
    }
    __m512i s = c0;
    s = _mm512_add_epi32(s, c1); s = _mm512_add_epi32(s, c2); s = _mm512_add_epi32(s, c3); s = _mm512_add_epi32(s, c4); s = _mm512_add_epi32(s, c5); s = _mm512_add_epi32(s, c6); s = _mm512_add_epi32(s, c7); s = _mm512_add_epi32(s, c8); s = _mm512_add_epi32(s, c9); s = _mm512_add_epi32(s, c10); s = _mm512_add_epi32(s, c11); s = _mm512_add_epi32(s, c12); s = _mm512_add_epi32(s, c13); s = _mm512_add_epi32(s, c14); s = _mm512_add_epi32(s, c15);
    static volatile int sink;
    sink = _mm512_reduce_add_epi32(s);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) return 2;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512vnni")) {
        printf("0\n");
        return 0;
    }
    pthread_t th[256];
    double t0 = now();
    for (long i = 0; i < threads; i++) pthread_create(&th[i], NULL, work, (void *)i);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    printf("%.3f\n", (double)threads * ITERS / (now() - t0) / 1e9);
    return 0;
}
