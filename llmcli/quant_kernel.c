/* llmcli's CPU kernel for ggml's Q8_0, Q4_0 and Q4_1 weights (see llmcli/quant.py).

   y[m, n] = sum_k x[m, k] * W[n, k], W (N, K) stored as llmcli.quant.QuantTensor keeps it:
   codes  q8_0: int8 (N, K); q4_0/q4_1: uint8 (N, K/2), in each block of 32 weights byte j
          holding weight j (low nibble) and weight j + 16 (high nibble), as ggml stores them;
   scale  float16 (N, K/32); min (q4_1) float16 (N, K/32).

   The activations are quantized per block of 32 to int8 with a float scale, as llama.cpp
   does before its dot products (ggml's quantize_row_q8_0: d = max|x| / 127, q = round(x / d)),
   so each block's dot product is an integer sum of products:
     q8_0:  d_w d_x sum(q_w q_x)
     q4_0:  d_w d_x sum(n q_x) - 8 d_w (d_x sum(q_x))      n = nibble 0..15
     q4_1:  d_w d_x sum(n q_x) + m_w (d_x sum(q_x))
   accumulated in float32 over the blocks. Integer products: AVX-512 VNNI / AVX-VNNI
   (vpdpbusd) or AVX2 (vpmaddubsw + vpmaddwd) when compiled for them, else plain C.

   Built at first use by llmcli.quant (cc -O3 -march=native -shared) and called through
   ctypes with raw pointers; no Python or torch headers. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#include <immintrin.h>
#define LLMCLI_AVX2 1
#endif

enum { Q8_0 = 0, Q4_0 = 1, Q4_1 = 2 };

static inline float half_to_float(uint16_t h) {
#ifdef LLMCLI_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {                      /* subnormal */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* ggml's quantize_row_q8_0 (reference): per block d = amax / 127, q = roundf(x / d). */
static void quantize_x(const float *x, int K, int8_t *q, float *d, float *sq) {
    for (int b = 0; b < K / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        int32_t s = 0;
        for (int j = 0; j < 32; j++) {
            int v = (int)roundf(xb[j] * id);
            q[32 * b + j] = (int8_t)v;
            s += v;
        }
        d[b] = db;
        sq[b] = db * (float)s;     /* the block's sum of dequantized activations */
    }
}

#ifdef LLMCLI_AVX2
/* sum over 32 lanes of u[i] * s[i] (u unsigned bytes < 128 or nibbles, s signed bytes),
   as 8 int32 partial sums */
static inline __m256i dot_us(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

static inline float hsum(__m256 v) {
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
#endif

/* one row of W (n) against one quantized activation row: qx (K) int8, dx (nb) its block
   scales, sx (nb) its block sums dx * sum(qx); ds (nb) scratch */
static float row_dot(int scheme, const uint8_t *codes, const uint16_t *scale, const uint16_t *mins,
                     const int8_t *qx, const float *dx, const float *sx, int nb, float *ds) {
    float extra = 0.0f;
    int b = 0;
#ifdef LLMCLI_AVX2
    /* per block: ds = d_w d_x; and the offset term sum_b c_b sx_b, c = -8 d_w (q4_0) or m_w */
    __m256 ex = _mm256_setzero_ps();
    for (; b + 8 <= nb; b += 8) {
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scale + b)));
        _mm256_storeu_ps(ds + b, _mm256_mul_ps(dw, _mm256_loadu_ps(dx + b)));
        if (scheme == Q4_0)
            ex = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(-8.0f)), _mm256_loadu_ps(sx + b), ex);
        else if (scheme == Q4_1)
            ex = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mins + b))),
                                 _mm256_loadu_ps(sx + b), ex);
    }
    extra = hsum(ex);
#endif
    for (; b < nb; b++) {
        float dw = half_to_float(scale[b]);
        ds[b] = dw * dx[b];
        if (scheme == Q4_0) extra += -8.0f * dw * sx[b];
        else if (scheme == Q4_1) extra += half_to_float(mins[b]) * sx[b];
    }
#ifdef LLMCLI_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    b = 0;
    if (scheme == Q8_0) {
        for (; b + 2 <= nb; b += 2) {
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(codes + 32 * b));
            __m256i y0 = _mm256_loadu_si256((const __m256i *)(qx + 32 * b));
            __m256i w1 = _mm256_loadu_si256((const __m256i *)(codes + 32 * b + 32));
            __m256i y1 = _mm256_loadu_si256((const __m256i *)(qx + 32 * b + 32));
            __m256i p0 = dot_us(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(y0, w0));
            __m256i p1 = dot_us(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(y1, w1));
            acc0 = _mm256_fmadd_ps(_mm256_broadcast_ss(ds + b), _mm256_cvtepi32_ps(p0), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_broadcast_ss(ds + b + 1), _mm256_cvtepi32_ps(p1), acc1);
        }
        for (; b < nb; b++) {
            __m256i w0 = _mm256_loadu_si256((const __m256i *)(codes + 32 * b));
            __m256i y0 = _mm256_loadu_si256((const __m256i *)(qx + 32 * b));
            __m256i p0 = dot_us(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(y0, w0));
            acc0 = _mm256_fmadd_ps(_mm256_broadcast_ss(ds + b), _mm256_cvtepi32_ps(p0), acc0);
        }
        return hsum(_mm256_add_ps(acc0, acc1));
    }
    const __m256i low = _mm256_set1_epi8(0x0f);
#define NIBBLES(ptr) _mm256_and_si256(_mm256_insertf128_si256(_mm256_castsi128_si256( \
        _mm_loadu_si128((const __m128i *)(ptr))), _mm_srli_epi16(_mm_loadu_si128((const __m128i *)(ptr)), 4), 1), low)
    for (; b + 2 <= nb; b += 2) {
        __m256i w0 = NIBBLES(codes + 16 * b), w1 = NIBBLES(codes + 16 * b + 16);
        __m256i y0 = _mm256_loadu_si256((const __m256i *)(qx + 32 * b));
        __m256i y1 = _mm256_loadu_si256((const __m256i *)(qx + 32 * b + 32));
        acc0 = _mm256_fmadd_ps(_mm256_broadcast_ss(ds + b), _mm256_cvtepi32_ps(dot_us(w0, y0)), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_broadcast_ss(ds + b + 1), _mm256_cvtepi32_ps(dot_us(w1, y1)), acc1);
    }
    for (; b < nb; b++) {
        __m256i w0 = NIBBLES(codes + 16 * b);
        __m256i y0 = _mm256_loadu_si256((const __m256i *)(qx + 32 * b));
        acc0 = _mm256_fmadd_ps(_mm256_broadcast_ss(ds + b), _mm256_cvtepi32_ps(dot_us(w0, y0)), acc0);
    }
#undef NIBBLES
    return hsum(_mm256_add_ps(acc0, acc1)) + extra;
#else
    float total = 0.0f;
    for (b = 0; b < nb; b++) {
        const int8_t *y = qx + 32 * b;
        int32_t s = 0;
        if (scheme == Q8_0) {
            const int8_t *w = (const int8_t *)codes + 32 * b;
            for (int j = 0; j < 32; j++) s += (int32_t)w[j] * y[j];
        } else {
            const uint8_t *w = codes + 16 * b;
            for (int j = 0; j < 16; j++) s += (int32_t)(w[j] & 15) * y[j] + (int32_t)(w[j] >> 4) * y[j + 16];
        }
        total += ds[b] * (float)s;
    }
    return total + extra;
#endif
}

/* y (M, N) = x (M, K) W^T. Returns 0, or -1 when the scratch memory could not be had. */
int llmcli_qgemm(int scheme, const void *codes, const uint16_t *scale, const uint16_t *mins,
                 const float *x, float *y, int M, int N, int K) {
    int nb = K / 32;
    int8_t *qx = malloc((size_t)M * K);
    float *dx = malloc(sizeof(float) * (size_t)M * nb);
    float *sqx = malloc(sizeof(float) * (size_t)M * nb);
    float *ds = malloc(sizeof(float) * (size_t)nb);
    if (!qx || !dx || !sqx || !ds) {
        free(qx); free(dx); free(sqx); free(ds);
        return -1;
    }
    for (int m = 0; m < M; m++)
        quantize_x(x + (size_t)m * K, K, qx + (size_t)m * K, dx + (size_t)m * nb, sqx + (size_t)m * nb);
    size_t row_bytes = scheme == Q8_0 ? (size_t)K : (size_t)K / 2;
    for (int n = 0; n < N; n++) {
        const uint8_t *wr = (const uint8_t *)codes + (size_t)n * row_bytes;
        const uint16_t *sr = scale + (size_t)n * nb, *mr = mins ? mins + (size_t)n * nb : NULL;
        for (int m = 0; m < M; m++)
            y[(size_t)m * N + n] = row_dot(scheme, wr, sr, mr, qx + (size_t)m * K, dx + (size_t)m * nb,
                                           sqx + (size_t)m * nb, nb, ds);
    }
    free(qx); free(dx); free(sqx); free(ds);
    return 0;
}

/* What this build computes with (for llmcli's diagnostics). */
const char *llmcli_qgemm_isa(void) {
#if defined(LLMCLI_AVX2) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return "avx512-vnni";
#elif defined(LLMCLI_AVX2) && defined(__AVXVNNI__)
    return "avx-vnni";
#elif defined(LLMCLI_AVX2)
    return "avx2";
#else
    return "c";
#endif
}

/* W (N, K) → float32 out (N, K): d q, d (n - 8) or d n + m per block (exact in float32). */
void llmcli_dequantize(int scheme, const void *codes, const uint16_t *scale, const uint16_t *mins,
                       float *out, int N, int K) {
    int nb = K / 32;
    for (size_t n = 0; n < (size_t)N; n++) {
        for (int b = 0; b < nb; b++) {
            float d = half_to_float(scale[n * nb + b]), *o = out + n * K + 32 * b;
            if (scheme == Q8_0) {
                const int8_t *w = (const int8_t *)codes + n * K + 32 * b;
                for (int j = 0; j < 32; j++) o[j] = d * (float)w[j];
                continue;
            }
            const uint8_t *w = (const uint8_t *)codes + n * (K / 2) + 16 * b;
            float m = scheme == Q4_1 ? half_to_float(mins[n * nb + b]) : 0.0f;
            for (int j = 0; j < 16; j++) {
                int lo = w[j] & 15, hi = w[j] >> 4;
                o[j] = scheme == Q4_0 ? d * (float)(lo - 8) : d * (float)lo + m;
                o[j + 16] = scheme == Q4_0 ? d * (float)(hi - 8) : d * (float)hi + m;
            }
        }
    }
}
