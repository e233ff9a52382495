/* Memory read bandwidth: threads stream disjoint halves of a large buffer, each thread reading
 * its half as STREAMS interleaved sequential streams (one 64-byte line from each in turn: a single
 * stream per thread leaves bandwidth unused here, 23 vs 30 GB/s at 2 threads), median of several
 * passes. Used by compare.sh for the decode roofline. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { const char *p; size_t n; long long sink; } Job;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define STREAMS 8

static void *stream(void *arg) {
    Job *j = arg;
    __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
    size_t per = j->n / STREAMS / 64 * 64;
    for (size_t i = 0; i + 64 <= per; i += 64) {
        for (int s = 0; s < STREAMS; s++) {
            const char *p = j->p + s * per + i;
            a = _mm256_add_epi64(a, _mm256_loadu_si256((const __m256i *)p));
            b = _mm256_add_epi64(b, _mm256_loadu_si256((const __m256i *)(p + 32)));
        }
    }
    long long o[4];
    memcpy(o, &a, 32);
    j->sink = o[0] + o[1] + o[2] + o[3];
    memcpy(o, &b, 32);
    j->sink += o[0] + o[1] + o[2] + o[3];
    return NULL;
}

static int cmp(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    size_t n = (size_t)1 << 30;
    char *buf = malloc(n);
    memset(buf, 1, n);
    double gbs[7];
    for (int r = 0; r < 7; r++) {
        pthread_t t[64];
        Job jobs[64];
        double t0 = now();
        for (int i = 0; i < threads; i++) {
            jobs[i] = (Job){buf + i * (n / threads), n / threads, 0};
            pthread_create(&t[i], NULL, stream, &jobs[i]);
        }
        for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
        gbs[r] = n / (now() - t0) / 1e9;
    }
    qsort(gbs, 7, sizeof gbs[0], cmp);
    printf("%.2f\n", gbs[3]);
    return 0;
}
